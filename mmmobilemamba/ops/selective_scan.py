"""Selective scan (the S6 recurrence of Mamba): the one the model runs, its sequential twin,
and the reference layout of the authors' release and ``mamba_ssm``.

For each channel ``c`` and state ``n``::

    delta = softplus(delta + delta_bias)            if delta_softplus
    h_t   = exp(delta_t * A[c, n]) * h_{t-1} + delta_t * B[n, t] * u_t     (h_{-1} = 0)
    y_t   = sum_n C[n, t] * h_t + D[c] * u_t

The model's layout is token-major, ``(batch, L, D)``, what a channels-last feature map
flattens to (step ``t`` is a contiguous block of channels: no transposes), forwards or in
reverse. ``B``/``C`` are ``(batch, L, N)``, shared by all channels, or ``(batch, L, G, N)``:
``G`` groups of ``D / G`` consecutive channels with their own projections (mamba_ssm's
"groups"), so that several directions run as one scan over their concatenated channels:

* :func:`selective_scan_channels_last`: the fast scan. ``h_t = a_t h_{t-1} + b_t`` is a linear
  first-order recurrence, so it splits into chunks: a vectorised sequential pass inside chunks
  of ~sqrt(L) steps, the same recurrence over the chunk ends, one fix-up multiply-add (pure
  PyTorch, CPU and GPU, no compilation; see :func:`_scan`). Only products of decays
  ``a in (0, 1]`` are formed (never a division by a decay), so it is stable for any ``L`` and
  any ``delta``. Its backward is the adjoint recurrence run the other way, by the same scan,
  so memory stays O(L).
* :func:`selective_scan_channels_last_reference`: its sequential twin, same arguments: a plain
  loop over ``L``, the definition the fast scan is tested against.

The reference layout (the authors' release, ``mamba_ssm``: ``u, delta (batch, K*D, L)``,
``A (K*D, N)``, ``B, C (batch, K, N, L)`` with one B/C per direction, ``D, delta_bias (K*D,)``)
is kept for the public API and for ``mamba_ssm``'s fused CUDA kernel (optional, never
required): :func:`selective_scan` and :func:`selective_scan_reference` scan it with the two
functions above, its K directions as K channel groups of one token-major scan.
"""
import functools
import math
from typing import Callable, Optional, Tuple


import torch
import torch.nn.functional as F

__all__ = ['selective_scan', 'selective_scan_reference', 'selective_scan_channels_last',
           'selective_scan_channels_last_reference']

_SEQUENTIAL_MAX = 16  # up to this length one sequential pass; beyond, two levels of chunks
_BACKENDS = ('auto', 'torch', 'triton', 'cuda', 'reference')
_CHANNELS_LAST_BACKENDS = ('auto', 'torch', 'triton', 'export', 'reference')
_AUTO_CHOICES_LOGGED = set()


def _scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False,
          inplace: bool = False) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (``reverse``: ``h_t = a_t h_{t+1} + b_t``) along dim 1 of
    contiguous ``(rows, L, inner)`` tensors, zero initial state; no autograd.

    Chunked two-level scan. Viewed as ``(rows, n, c, inner)`` with ``n`` chunks of
    ``c ~ sqrt(L)`` steps, step ``t`` of every chunk is one strided view of ``rows * n`` blocks
    of ``inner`` contiguous values, so the ``c`` sequential steps are each one fused
    multiply-add over ``rows * n * inner`` values (Python overhead ``O(sqrt(L))``, work
    ``O(L)``), and no transpose is needed. The state entering each chunk comes from the same
    recurrence over the chunk ends, one level up, and is added back scaled by the running
    decay. Only products of decays in ``(0, 1]`` are formed, never a division, so no step can
    overflow whatever ``delta`` is. ``inplace`` lets it overwrite ``a`` and ``b``.
    """
    rows, length, inner = a.shape
    chunk = length if length <= _SEQUENTIAL_MAX else math.ceil(math.sqrt(length))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:
        # identity elements at the end: a = 1, b = 0 with a zero state stay zero going
        # backwards and do not matter going forwards
        decay = F.pad(a, (0, 0, 0, pad), value=1.0)
        state = F.pad(b, (0, 0, 0, pad), value=0.0)
    elif inplace:
        decay, state = a, b
    else:
        decay, state = a.clone(), b.clone()
    decay = decay.view(rows, num_chunks, chunk, inner)
    state = state.view(rows, num_chunks, chunk, inner)
    step = 1 if reverse else -1   # offset of the step each one depends on
    decays, states = decay.unbind(2), state.unbind(2)  # views, one per step
    for t in (range(chunk - 2, -1, -1) if reverse else range(1, chunk)):
        states[t].addcmul_(decays[t], states[t + step])
        if num_chunks > 1:
            decays[t].mul_(decays[t + step])  # decay since the chunk's start
    if num_chunks > 1:
        end = 0 if reverse else chunk - 1
        carry = _scan(decay[:, :, end].contiguous(), state[:, :, end].contiguous(), reverse,
                      inplace=True)                   # state at the end of every chunk
        if reverse:  # plus the state entering each chunk from its neighbour
            state[:, :-1].addcmul_(decay[:, :-1], carry[:, 1:, None])
        else:
            state[:, 1:].addcmul_(decay[:, 1:], carry[:, :-1, None])
    h = state.view(rows, num_chunks * chunk, inner)
    return h[:, :length] if pad else h


def _scan_out_of_place(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """:func:`_scan`'s chunked recurrence written with out-of-place ops only.

    A tracer (``torch.onnx.export``) records it as ``2 sqrt(L)`` steps of a few elementwise ops
    over ``rows * chunks * inner`` values: the steps inside the chunks, all chunks at once, then
    the recurrence over the chunk ends. Only products of decays in ``(0, 1]`` are formed, as in
    :func:`_scan`. About half the speed of :func:`_scan` in eager PyTorch (it allocates what
    :func:`_scan` updates in place).
    """
    if reverse:
        return _scan_out_of_place(a.flip(1), b.flip(1)).flip(1)
    rows, length, inner = a.shape
    chunk = length if length <= _SEQUENTIAL_MAX else math.ceil(math.sqrt(length))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:  # identity steps at the end: decay 1, input 0
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        b = F.pad(b, (0, 0, 0, pad))
    # steps as size-1 slices (one Split each when exported, no per-step Gather/Squeeze)
    decay = a.reshape(rows, num_chunks, chunk, inner).split(1, dim=2)
    step_in = b.reshape(rows, num_chunks, chunk, inner).split(1, dim=2)
    states, decays = [step_in[0]], [decay[0]]
    for t in range(1, chunk):  # every chunk from a zero state; decay since the chunk's start
        states.append(decay[t] * states[-1] + step_in[t])
        decays.append(decay[t] * decays[-1])
    h = torch.cat(states, dim=2)                                     # (rows, chunks, chunk, inner)
    if num_chunks > 1:  # the state each chunk starts from, scaled by its decay so far
        end_decay = decays[-1].split(1, dim=1)
        end_state = states[-1].split(1, dim=1)
        entering = [torch.zeros_like(end_state[0]), end_state[0]]
        for k in range(1, num_chunks - 1):
            entering.append(end_decay[k] * entering[-1] + end_state[k])
        h = h + torch.cat(decays, dim=2) * torch.cat(entering, dim=1)
    return h.reshape(rows, num_chunks * chunk, inner)[:, :length]


def _shift(x: torch.Tensor, towards_end: bool) -> torch.Tensor:
    """``x`` moved one step along dim 1 of ``(rows, L, inner)``, zero filled."""
    return F.pad(x[:, :-1], (0, 0, 1, 0)) if towards_end else F.pad(x[:, 1:], (0, 0, 0, 1))


def adjoint_recurrence_function(
        recurrence: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]) -> type:
    """An autograd Function computing ``h = recurrence(a, b, reverse)`` (``h_t = a_t h_{t-1}
    + b_t`` along dim 1, or reversed), whose backward runs the same ``recurrence`` the other
    way: the adjoint of a linear recurrence is the reversed recurrence,
    ``g_t = grad_h_t + a_{t+1} g_{t+1}``, and ``grad_a_t = g_t h_{t-1}``.

    ``recurrence`` must leave its inputs unchanged. Used with the PyTorch scan and the Triton
    kernel.
    """

    class LinearRecurrence(torch.autograd.Function):

        @staticmethod
        def forward(ctx, a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
            h = recurrence(a, b, reverse)
            ctx.reverse = reverse
            ctx.save_for_backward(a, h)
            return h

        @staticmethod
        def backward(ctx, grad_h: torch.Tensor):
            a, h = ctx.saved_tensors
            reverse = ctx.reverse
            g = recurrence(_shift(a, towards_end=reverse).contiguous(), grad_h.contiguous(),
                           not reverse)
            grad_a = g * _shift(h, towards_end=not reverse) if ctx.needs_input_grad[0] else None
            return grad_a, g, None

    return LinearRecurrence


_LinearRecurrence = adjoint_recurrence_function(_scan)


def _float32_under_autocast(fn: Callable) -> Callable:
    """Run ``fn`` with autocast off on its inputs' device: the scan's exp, softplus and
    recurrence stay float32 (they cast their inputs) whatever precision the model runs in."""

    @functools.wraps(fn)
    def float32_scan(u: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(device_type=u.device.type, enabled=False):
            return fn(u, *args, **kwargs)

    return float32_scan


def _check_layout(u, delta, A, B, C, D, delta_bias) -> Tuple[int, int, int, int]:
    """Validate the reference layout; return (batch, K, N, L)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f'selective_scan: u and delta must both be (batch, K*D, L); got {tuple(u.shape)} '
            f'and {tuple(delta.shape)}')
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f'selective_scan: A must be (K*D, N) = ({channels}, N); got {tuple(A.shape)}')
    n_state = A.shape[1]
    if B.dim() != 4 or B.shape[0] != batch or B.shape[2:] != (n_state, length):
        raise ValueError(
            f'selective_scan: B must be (batch, K, N, L) = ({batch}, K, {n_state}, {length}); '
            f'got {tuple(B.shape)}')
    if C.shape != B.shape:
        raise ValueError(f'selective_scan: C {tuple(C.shape)} must have the shape of B {tuple(B.shape)}')
    k_dirs = B.shape[1]
    if channels % k_dirs:
        raise ValueError(f'selective_scan: K*D = {channels} channels is not divisible by K = {k_dirs}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f'selective_scan: {name} must be ({channels},); got {tuple(t.shape)}')
    return batch, k_dirs, n_state, length


def _check_channels_last(u, delta, A, B, C, D, delta_bias, where: str) -> Tuple[int, int, int, int]:
    """Validate the token-major layout; return (batch, L, D, N)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'{where}: u and delta must both be (batch, L, D); got '
                         f'{tuple(u.shape)} and {tuple(delta.shape)}')
    batch, length, channels = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f'{where}: A must be (D, N) = ({channels}, N); got {tuple(A.shape)}')
    n_state = A.shape[1]
    groups = B.shape[2] if B.dim() == 4 else 1
    if (B.shape[:2] != (batch, length) or B.shape[-1] != n_state or B.dim() not in (3, 4)
            or channels % groups):
        raise ValueError(f'{where}: B must be (batch, L, N) = ({batch}, {length}, {n_state}) or '
                         f'(batch, L, G, N) with G dividing D = {channels}; got {tuple(B.shape)}')
    if C.shape != B.shape:
        raise ValueError(f'{where}: C must be shaped as B {tuple(B.shape)}; got {tuple(C.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f'{where}: {name} must be ({channels},); got {tuple(t.shape)}')
    return batch, length, channels, n_state


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """``(..., D)`` viewed as ``(..., G, D / G)``: the channels of each B/C group."""
    return t.view(*t.shape[:-1], groups, t.shape[-1] // groups)


def _as_groups(t: torch.Tensor) -> torch.Tensor:
    """B or C as ``(batch, L, G, N)`` (one group when given ``(batch, L, N)``)."""
    return t if t.dim() == 4 else t.unsqueeze(2)


def _scan_inputs(u32, delta32, A32, B32) -> Tuple[torch.Tensor, torch.Tensor]:
    """The recurrence's decays and inputs, ``(batch, L, D*N)``: ``exp(delta A)`` and
    ``delta u B`` (``B32``: ``(batch, L, G, N)``)."""
    groups = B32.shape[2]
    a = torch.exp(delta32[..., None] * A32).flatten(2)
    b = _grouped(delta32 * u32, groups)[..., None] * B32[:, :, :, None]   # (b, L, G, D/G, N)
    return a, b.flatten(2)


def _read_out(h, C32) -> torch.Tensor:
    """``y_t = sum_n C[n, t] h_t`` from the states ``(batch, L, D*N)`` (``C32``:
    ``(batch, L, G, N)``)."""
    batch, length, groups, n_state = C32.shape
    h = h.reshape(batch, length, groups, -1, n_state)
    return (h * C32[:, :, :, None]).sum(-1).flatten(2)


def _step_sizes(delta: torch.Tensor, delta_bias: Optional[torch.Tensor],
                delta_softplus: bool) -> torch.Tensor:
    """``softplus(delta + delta_bias)`` in float32 (a new tensor unless nothing applies)."""
    delta32 = delta.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()
    return F.softplus(delta32) if delta_softplus else delta32


@_float32_under_autocast
def selective_scan_channels_last(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                                 B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                                 delta_bias: Optional[torch.Tensor] = None,
                                 delta_softplus: bool = True, reverse: bool = False,
                                 backend: str = 'auto') -> torch.Tensor:
    """One direction of the selective scan in the token-major layout: the scan SS2D runs.

    Args:
        u (Tensor): inputs, (batch, L, D).
        delta (Tensor): step sizes before bias/softplus, (batch, L, D).
        A (Tensor): state matrix (negative), (D, N).
        B (Tensor): input projections, (batch, L, N), or (batch, L, G, N): one per group of
            D / G consecutive channels.
        C (Tensor): output projections, shaped as ``B``.
        D (Tensor, optional): skip connection, (D,).
        delta_bias (Tensor, optional): added to ``delta`` before the softplus, (D,).
        delta_softplus (bool): apply softplus to ``delta``. Default: True.
        reverse (bool): scan from the last token to the first (``h_t`` depends on ``h_{t+1}``),
            i.e. the scan of the flipped sequence, flipped back. Default: False.
        backend (str): 'torch' (the chunked PyTorch scan), 'triton' (the recurrence as a
            Triton kernel: CUDA tensors), 'auto' (Triton on CUDA when it imports, else
            'torch'; see :func:`resolve_backend`), 'export' (the chunked recurrence with
            out-of-place ops only: what ONNX export traces, ``2 sqrt(L)`` steps) or
            'reference' (the sequential twin). Default: 'auto'.

    Returns:
        Tensor: (batch, L, D) in the dtype of ``u``; arithmetic is float32 throughout.
    """
    if backend not in _CHANNELS_LAST_BACKENDS:
        raise ValueError(f'selective_scan_channels_last: unknown backend {backend!r}; choose '
                         f'one of {_CHANNELS_LAST_BACKENDS}')
    backend = resolve_backend(backend, u.device, mamba_ssm=False)
    if backend == 'reference':
        return selective_scan_channels_last_reference(u, delta, A, B, C, D, delta_bias,
                                                      delta_softplus, reverse)
    batch, length, channels, n_state = _check_channels_last(
        u, delta, A, B, C, D, delta_bias, 'selective_scan_channels_last')
    if backend == 'export':
        return _scan_channels_last_for_export(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                              reverse)
    if backend == 'triton':
        return _scan_channels_last_triton(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                          reverse)
    tensors = (u, delta, A, B, C, D, delta_bias)
    track = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    u32, A32 = u.float().contiguous(), A.float()
    B32, C32 = _as_groups(B.float()), _as_groups(C.float())
    groups = B32.shape[2]
    delta32 = _step_sizes(delta, delta_bias, delta_softplus).contiguous()
    if not track and n_state == 1:
        # inference: the same arithmetic in place on temporaries (fewer passes over memory)
        a = torch.mul(delta32, A32[:, 0]).exp_()
        b = delta32.mul_(u32) if delta32 is not delta else delta32 * u32
        _grouped(b, groups).mul_(B32)
        y = _scan(a, b, reverse, inplace=True)
        _grouped(y, groups).mul_(C32)
        if D is not None:
            y.addcmul_(u32, D.float())
        return y.to(u.dtype)
    a, b = _scan_inputs(u32, delta32, A32, B32)
    if track:
        h = _LinearRecurrence.apply(a, b, reverse)
    else:  # a and b are temporaries: scan them in place
        h = _scan(a, b, reverse, inplace=True)
    y = _read_out(h, C32)
    if D is not None:
        y = torch.addcmul(y, u32, D.float())
    return y.to(u.dtype)


def _scan_channels_last_triton(u, delta, A, B, C, D, delta_bias, delta_softplus,
                               reverse) -> torch.Tensor:
    """The token-major scan with the recurrence in Triton (:mod:`.triton_scan`)."""
    triton_scan = _triton_scan()
    if triton_scan is None:
        raise ImportError("selective scan backend 'triton' needs Triton (pip install triton; "
                          "it comes with torch's CUDA builds); use backend 'torch' instead")
    u32, A32 = u.float(), A.float()
    delta32 = _step_sizes(delta, delta_bias, delta_softplus)
    a, b = _scan_inputs(u32, delta32, A32, _as_groups(B.float()))
    y = _read_out(triton_scan.linear_recurrence_triton(a, b, reverse), _as_groups(C.float()))
    if D is not None:
        y = y + u32 * D.float()
    return y.to(u.dtype)


def _scan_channels_last_for_export(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                   reverse) -> torch.Tensor:
    """The token-major scan by :func:`_scan_out_of_place` (autograd through plain ops)."""
    u32, A32 = u.float(), A.float()
    delta32 = _step_sizes(delta, delta_bias, delta_softplus)
    a, b = _scan_inputs(u32, delta32, A32, _as_groups(B.float()))
    y = _read_out(_scan_out_of_place(a, b, reverse), _as_groups(C.float()))
    if D is not None:
        y = y + u32 * D.float()
    return y.to(u.dtype)


@_float32_under_autocast
def selective_scan_channels_last_reference(u: torch.Tensor, delta: torch.Tensor,
                                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                                           D: Optional[torch.Tensor] = None,
                                           delta_bias: Optional[torch.Tensor] = None,
                                           delta_softplus: bool = True, reverse: bool = False,
                                           backend: str = 'reference') -> torch.Tensor:
    """Plain sequential twin of :func:`selective_scan_channels_last`: the definition.

    Same arguments (``backend`` is accepted and ignored so both share one signature). Slow: a
    Python loop over ``L``; differentiable by autograd.
    """
    _check_channels_last(u, delta, A, B, C, D, delta_bias,
                         'selective_scan_channels_last_reference')
    u32, A32 = u.float(), A.float()
    B32, C32 = _as_groups(B.float()), _as_groups(C.float())
    # each channel's own projections: its group's, repeated over the group's channels
    per_channel = u32.shape[2] // B32.shape[2]
    B32, C32 = (t.repeat_interleave(per_channel, dim=2) for t in (B32, C32))  # (batch, L, D, N)
    delta32 = _step_sizes(delta, delta_bias, delta_softplus)
    h = u32.new_zeros(u32.shape[0], u32.shape[2], A32.shape[1])            # (batch, D, N)
    ys = [None] * u32.shape[1]
    for t in (reversed(range(len(ys))) if reverse else range(len(ys))):
        decay = torch.exp(delta32[:, t, :, None] * A32)
        h = decay * h + (delta32[:, t] * u32[:, t])[..., None] * B32[:, t]
        ys[t] = (h * C32[:, t]).sum(-1)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u32 * D.float()
    return y.to(u.dtype)


def _as_token_major(scan, u, delta, A, B, C, D, delta_bias, delta_softplus) -> torch.Tensor:
    """The reference layout scanned by a token-major ``scan``: its K directions are K channel
    groups with their own B and C."""
    _check_layout(u, delta, A, B, C, D, delta_bias)
    y = scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.permute(0, 3, 1, 2),
             C.permute(0, 3, 1, 2), D, delta_bias, delta_softplus)
    return y.transpose(1, 2).contiguous()


@_float32_under_autocast
def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                             delta_bias: Optional[torch.Tensor] = None,
                             delta_softplus: bool = True, backend: str = 'reference') -> torch.Tensor:
    """Plain sequential selective scan in the reference layout: the definition.

    Same arguments as :func:`selective_scan` (``backend`` is accepted and ignored so both share
    one signature): :func:`selective_scan_channels_last_reference` with the K directions as
    channel groups. Slow.
    """
    return _as_token_major(selective_scan_channels_last_reference, u, delta, A, B, C, D,
                         delta_bias, delta_softplus)


@functools.lru_cache(maxsize=None)
def _triton_scan():
    """:mod:`mmmobilemamba.ops.triton_scan` if Triton imports, else None (looked up once)."""
    try:
        from . import triton_scan
    except Exception:  # ImportError, or a Triton that does not work with this torch
        return None
    return triton_scan


def resolve_backend(backend: str, device: torch.device, mamba_ssm: bool = True) -> str:
    """The backend ``'auto'`` stands for on ``device``; others are returned as they are.

    On CUDA: Triton's kernel when Triton imports, else mamba_ssm's kernel (``'cuda'``, with
    ``mamba_ssm`` true: it takes the reference layout) when installed, else the PyTorch scan;
    the choice is logged once per process. Elsewhere: the PyTorch scan.
    """
    if backend != 'auto':
        return backend
    if torch.device(device).type != 'cuda':
        return 'torch'
    if _triton_scan() is not None:
        chosen = 'triton'
    elif mamba_ssm and _mamba_ssm_scan() is not None:
        chosen = 'cuda'
    else:
        chosen = 'torch'
    if chosen not in _AUTO_CHOICES_LOGGED:
        _AUTO_CHOICES_LOGGED.add(chosen)
        from mmengine.logging import print_log
        what = {'triton': "Triton's kernel", 'cuda': "mamba_ssm's CUDA kernel",
                'torch': 'the PyTorch scan (neither Triton nor mamba_ssm imports)'}[chosen]
        print_log(f"selective scan on CUDA (backend 'auto'): {what}", logger='current')
    return chosen


@functools.lru_cache(maxsize=None)
def _mamba_ssm_scan():
    """The fused CUDA kernel of ``mamba_ssm`` if importable, else None.

    Looked up once: SS2D asks on every CUDA forward, and Python retries a failed import (a
    search of the whole path) every time it is asked.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken build (undefined symbols)
        return None
    return selective_scan_fn


@_float32_under_autocast
def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True,
                   backend: str = 'auto') -> torch.Tensor:
    """Selective scan in the reference layout (see the module docstring).

    Args:
        u (Tensor): inputs, (batch, K*D, L).
        delta (Tensor): step sizes before bias/softplus, (batch, K*D, L).
        A (Tensor): state matrix (negative), (K*D, N).
        B (Tensor): input projections per direction, (batch, K, N, L).
        C (Tensor): output projections per direction, (batch, K, N, L).
        D (Tensor, optional): skip connection, (K*D,).
        delta_bias (Tensor, optional): added to ``delta`` before the softplus, (K*D,).
        delta_softplus (bool): apply softplus to ``delta``. Default: True.
        backend (str): 'auto' (on CUDA Triton's kernel, else mamba_ssm's when installed, else
            'torch': :func:`resolve_backend`), 'torch' (the chunked PyTorch scan, one
            direction at a time), 'triton', 'cuda' (mamba_ssm's kernel, an error if missing)
            or 'reference' (the sequential twin).

    Returns:
        Tensor: (batch, K*D, L) in the dtype of ``u``; arithmetic is float32 throughout.
    """
    if backend not in _BACKENDS:
        raise ValueError(f'selective_scan: unknown backend {backend!r}; choose one of {_BACKENDS}')
    _check_layout(u, delta, A, B, C, D, delta_bias)
    backend = resolve_backend(backend, u.device)
    if backend == 'reference':
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend == 'cuda':
        kernel = _mamba_ssm_scan()
        if kernel is None or not u.is_cuda:
            raise RuntimeError(
                "selective_scan(backend='cuda') needs CUDA tensors and the mamba_ssm kernel "
                "(pip install mamba-ssm); use backend 'triton' or 'torch' instead")
        # the fused kernel takes (batch, K, N, L) B/C as "variable" groups directly
        out = kernel(u.float(), delta.float(), A.float(), B.float(), C.float(),
                     None if D is None else D.float(),
                     delta_bias=None if delta_bias is None else delta_bias.float(),
                     delta_softplus=delta_softplus)
        return out.to(u.dtype)
    scan = functools.partial(selective_scan_channels_last, backend=backend)
    return _as_token_major(scan, u, delta, A, B, C, D, delta_bias, delta_softplus)
