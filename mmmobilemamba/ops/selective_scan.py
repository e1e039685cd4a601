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
  PyTorch, CPU and GPU, no compilation; see
  :func:`~mmmobilemamba.ops.scan_torch.chunked_recurrence`). Only products of decays
  ``a in (0, 1]`` are formed (never a division by a decay), so it is stable for any ``L`` and
  any ``delta``. Its backward is the adjoint recurrence run the other way, by the same scan,
  so memory stays O(L).
* :func:`selective_scan_channels_last_reference`: its sequential twin, same arguments: a plain
  loop over ``L``, the definition the fast scan is tested against.
* ``backend='export'``: the form exported graphs run (ONNX, ExecuTorch): a fixed set of large
  ops whatever ``L`` (:mod:`.scan_chunked`), equal to the twin up to float32 rounding.

The reference layout (the authors' release, ``mamba_ssm``: ``u, delta (batch, K*D, L)``,
``A (K*D, N)``, ``B, C (batch, K, N, L)`` with one B/C per direction, ``D, delta_bias (K*D,)``)
is kept for the public API and for ``mamba_ssm``'s fused CUDA kernel (optional, never
required): :func:`selective_scan` and :func:`selective_scan_reference` scan it with the two
functions above, its K directions as K channel groups of one token-major scan.

SS2D runs :func:`ss2d_scan`: both directions of its scan as one custom op
(:mod:`.scan_ops`) reading the projections where they are (no flips, no concatenation), fused
on CUDA into Triton kernels that scan the directions, blocks of channels and, where these are
too few for the GPU, chunks of tokens in parallel (:mod:`.triton_scan`), with
:func:`ss2d_scan_reference` its sequential twin.
"""
import functools
import logging
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .scan_chunked import selective_scan_chunked, ss2d_scan_chunked
from .scan_ops import linear_recurrence, ss2d_scan_op
from .scan_torch import check_ss2d_scan_inputs, chunked_recurrence

__all__ = ['selective_scan', 'selective_scan_reference', 'selective_scan_channels_last',
           'selective_scan_channels_last_reference', 'ss2d_scan', 'ss2d_scan_reference']
_BACKENDS = ('auto', 'torch', 'triton', 'cuda', 'reference')
_CHANNELS_LAST_BACKENDS = ('auto', 'torch', 'triton', 'export', 'reference')
_AUTO_CHOICES_LOGGED = set()


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
            'torch'; see :func:`resolve_backend`), 'export' (a fixed set of large ops, what
            exported graphs run: :mod:`.scan_chunked`) or 'reference' (the sequential
            twin). Default: 'auto'.

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
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus, reverse)
    if backend == 'triton':
        return _token_major_scan(_triton_recurrence, u, delta, A, B, C, D, delta_bias,
                                 delta_softplus, reverse)
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
        y = chunked_recurrence(a, b, reverse, inplace=True)
        _grouped(y, groups).mul_(C32)
        if D is not None:
            y.addcmul_(u32, D.float())
        return y.to(u.dtype)
    a, b = _scan_inputs(u32, delta32, A32, B32)
    if track:
        h = linear_recurrence(a, b, reverse, 'torch')
    else:  # a and b are temporaries: scan them in place
        h = chunked_recurrence(a, b, reverse, inplace=True)
    y = _read_out(h, C32)
    if D is not None:
        y = torch.addcmul(y, u32, D.float())
    return y.to(u.dtype)


def _token_major_scan(recurrence: Callable, u, delta, A, B, C, D, delta_bias, delta_softplus,
                      reverse) -> torch.Tensor:
    """The token-major scan with ``recurrence(a, b, reverse)`` for its recurrence, out of
    place (autograd through it): the Triton kernel's op."""
    u32, A32 = u.float(), A.float()
    delta32 = _step_sizes(delta, delta_bias, delta_softplus)
    a, b = _scan_inputs(u32, delta32, A32, _as_groups(B.float()))
    y = _read_out(recurrence(a, b, reverse), _as_groups(C.float()))
    if D is not None:
        y = y + u32 * D.float()
    return y.to(u.dtype)


def _triton_recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    return linear_recurrence(a, b, reverse, 'triton')


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


_SS2D_BACKENDS = ('auto', 'torch', 'triton', 'export')


@_float32_under_autocast
def ss2d_scan(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
              backend: str = 'auto', sum_directions: bool = True) -> torch.Tensor:
    """SS2D's selective scan, both directions at once: one op (one or two kernels on CUDA).

    Direction ``k`` has its own step sizes, projections and parameters; direction 0 scans
    the tokens forwards, direction 1 backwards (the reversed scan of the authors' flipped
    sequence, flipped back). For each channel ``c`` and state ``n``, with ``A = -exp(A_log)``
    (SS2D's parametrisation, kept inside the op: its gradient too)::

        dt_k = softplus(delta[:, k] + delta_bias_k)
        h_kt = exp(dt_kt A_k[c, n]) h_k,t-+1 + dt_kt u_t B_k[n, t]
        y_kt = sum_n C_k[n, t] h_kt + D_k[c] u_t
        y_t  = sum_k y_kt                                  (sum_directions)

    Inputs may have any strides and dtype (the channel-major views of an NCHW map and of the
    projections, as SS2D passes them); the arithmetic is float32.

    Args:
        u (Tensor): inputs, (batch, d, L).
        delta (Tensor): step sizes before bias/softplus, (batch, K, d, L), K = 1 or 2.
        A_log (Tensor): log of minus the state matrix, (K*d, N).
        B (Tensor): input projections, (batch, K, N, L).
        C (Tensor): output projections, (batch, K, N, L).
        D (Tensor): skip connection, (K*d,).
        delta_bias (Tensor): added to ``delta`` before the softplus, (K*d,).
        backend (str): 'torch' (:mod:`.scan_torch`: the chunked scan, any device), 'triton'
            (:mod:`.triton_scan`: CUDA), 'export' (:mod:`.scan_chunked`: a fixed set of large
            ops, what exported graphs run; plain ops, not a custom op) or 'auto' (Triton on
            CUDA when it imports, else 'torch'). Default: 'auto'.
        sum_directions (bool): return the sum over the directions (True) or each direction's
            output (False: the op's result, for an op after it that sums them itself; not
            with 'export', whose form sums them inside). Default: True.

    Returns:
        Tensor: float32, token-major, differentiable: ``y`` (batch, L, d) with
        ``sum_directions``, else ``y_k`` (batch, K, L, d), contiguous.
    """
    if backend not in _SS2D_BACKENDS:
        raise ValueError(f'ss2d_scan: unknown backend {backend!r}; choose one of '
                         f'{_SS2D_BACKENDS}')
    check_ss2d_scan_inputs(u, delta, A_log, B, C, D, delta_bias)
    if backend == 'export':
        if not sum_directions:
            raise ValueError("ss2d_scan: backend='export' returns the directions' sum; pass "
                             "sum_directions=True or another backend")
        return ss2d_scan_chunked(u, delta, A_log, B, C, D, delta_bias).transpose(1, 2)
    backend = resolve_backend(backend, u.device, mamba_ssm=False)
    y = ss2d_scan_op(u, delta, A_log, B, C, D, delta_bias, backend)
    return _sum_directions(y) if sum_directions else y


def _sum_directions(y: torch.Tensor) -> torch.Tensor:
    """(batch, K, L, d) -> (batch, L, d): one op (a view for one direction)."""
    return y[:, 0] if y.shape[1] == 1 else y.sum(1)


@_float32_under_autocast
def ss2d_scan_reference(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor,
                        B: torch.Tensor,
                        C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                        backend: str = 'reference', sum_directions: bool = True) -> torch.Tensor:
    """Sequential twin of :func:`ss2d_scan` (same arguments; ``backend`` is ignored): each
    direction by :func:`selective_scan_channels_last_reference`. Slow; differentiable by
    autograd."""
    _, directions, channels, _, _ = check_ss2d_scan_inputs(u, delta, A_log, B, C, D, delta_bias)
    A = -torch.exp(A_log.float())
    u_t = u.transpose(1, 2)
    ys = []
    for k in range(directions):
        part = slice(k * channels, (k + 1) * channels)
        ys.append(selective_scan_channels_last_reference(
            u_t, delta[:, k].transpose(1, 2), A[part], B[:, k].transpose(1, 2),
            C[:, k].transpose(1, 2), D[part], delta_bias[part], True, reverse=k == 1).float())
    y = torch.stack(ys, 1)
    return _sum_directions(y) if sum_directions else y


@functools.lru_cache(maxsize=None)
def _triton_scan():
    """:mod:`mmmobilemamba.ops.triton_scan` if Triton's kernel modules (the scan's and the
    fused layers') import, else None (looked up once)."""
    try:
        from . import triton_fused, triton_scan  # noqa: F401
    except Exception:  # ImportError, or a Triton that does not work with this torch
        return None
    return triton_scan


def resolve_backend(backend: str, device: torch.device, mamba_ssm: bool = True) -> str:
    """The backend ``'auto'`` stands for on ``device``; others are returned as they are.

    On CUDA: Triton's kernels when Triton imports; else mamba_ssm's kernel (``'cuda'``, with
    ``mamba_ssm`` true: it takes the reference layout) when installed, else the PyTorch scan,
    with a warning (once per process): without Triton the custom ops run their PyTorch
    twins, many kernels each. Elsewhere: the PyTorch scan.
    """
    if backend != 'auto':
        return backend
    return _auto_backend(torch.device(device).type, mamba_ssm)


def custom_op_backend(backend: str, device: torch.device) -> str:
    """The implementation, 'triton' or 'torch', of the custom ops (the scan, the fused
    layers, the recurrence) of a layer whose scan backend is ``backend``: 'triton' puts every
    one on its Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
    'auto' (and 'cuda', mamba_ssm's scan, whose neighbours need kernels too) Triton's on
    CUDA (see :func:`resolve_backend`), the twins elsewhere; 'torch', 'reference' and
    'export' the PyTorch twins."""
    if backend in ('auto', 'cuda'):
        return _auto_backend(torch.device(device).type, False)
    return 'triton' if backend == 'triton' else 'torch'


@torch.compiler.assume_constant_result
def _auto_backend(device_type: str, mamba_ssm: bool) -> str:
    """:func:`resolve_backend`'s 'auto' on a device type. A constant to ``torch.compile``:
    Dynamo calls it once while tracing instead of tracing the imports and the log (which would
    break the graph)."""
    if device_type != 'cuda':
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
        if chosen == 'triton':
            print_log("selective scan on CUDA (backend 'auto'): Triton's kernel",
                      logger='current')
        else:
            what = ("mamba_ssm's CUDA kernel for the scan, the fused layers' PyTorch twins"
                    if chosen == 'cuda' else 'the PyTorch twins of every custom op')
            message = (f"backend 'auto' on CUDA: Triton does not import, so {what} run, many "
                       'kernels each (slow). Install Triton (it comes with torch\'s Linux CUDA '
                       "wheels), or choose scan_backend='torch' to run the twins on purpose")
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            print_log(message, logger='current', level=logging.WARNING)
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
