"""Selective scan (the S6 recurrence of Mamba) in the reference layout.

Layout (the one of the authors' release and of ``mamba_ssm``):
    u, delta:      (batch, K*D, L)
    A:             (K*D, N)
    B, C:          (batch, K, N, L)   one B/C per scan direction, shared by its D channels
    D, delta_bias: (K*D,)
    output:        (batch, K*D, L)

For each channel ``c`` (direction ``k = c // D``) and state ``n``::

    delta = softplus(delta + delta_bias)            if delta_softplus
    h_t   = exp(delta_t * A[c, n]) * h_{t-1} + delta_t * B[k, n, t] * u_t     (h_{-1} = 0)
    y_t   = sum_n C[k, n, t] * h_t + D[c] * u_t

Two implementations with one signature:

* :func:`selective_scan_reference`: a plain sequential loop over ``L``; the definition.
* :func:`selective_scan`: the default. The recurrence ``h_t = a_t h_{t-1} + b_t`` is a linear
  first-order recurrence, so it splits into chunks: a vectorised sequential pass inside chunks
  of ~sqrt(L) steps, the same recurrence over the chunk ends, one fix-up multiply-add (pure
  PyTorch, CPU and GPU, no compilation; see :func:`_scan`). Only products of decays
  ``a in (0, 1]`` are formed (never a division by a decay), so it is stable for any ``L`` and
  any ``delta``. Its backward is the adjoint recurrence run in reverse, computed by the same
  scan in a custom autograd function, so memory stays O(L) (a and h are saved; nothing
  proportional to L times the chunk length).
* :func:`selective_scan_channels_last`: one direction in the token-major layout
  ``(batch, L, D)`` that a channels-last feature map flattens to, forwards or in reverse: the
  same recurrence without any transpose (step ``t`` is a contiguous block of channels). SS2D
  uses it for its two directions on the PyTorch backend.
* ``backend='cuda'`` uses ``mamba_ssm``'s fused kernel when installed (optional; never
  required); ``'auto'`` takes it for CUDA tensors when it imports, else the PyTorch scan.
"""
import functools
import math
from typing import Optional, Tuple


import torch
import torch.nn.functional as F

__all__ = ['selective_scan', 'selective_scan_reference', 'selective_scan_channels_last',
           'linear_recurrence']

_SEQUENTIAL_MAX = 16  # up to this length one sequential pass; beyond, two levels of chunks
_BACKENDS = ('auto', 'torch', 'cuda', 'reference')


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


def _shift(x: torch.Tensor, towards_end: bool) -> torch.Tensor:
    """``x`` moved one step along dim 1 of ``(rows, L, inner)``, zero filled."""
    return F.pad(x[:, :-1], (0, 0, 1, 0)) if towards_end else F.pad(x[:, 1:], (0, 0, 0, 1))


class _LinearRecurrence(torch.autograd.Function):
    """Autograd wrapper: the adjoint of a linear recurrence is the recurrence run the other way."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
        h = _scan(a, b, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h = ctx.saved_tensors
        reverse = ctx.reverse
        # forward recurrence: g_t = grad_h_t + a_{t+1} g_{t+1}, a scan the other way
        # (and mirrored for a reverse one)
        a_other = _shift(a, towards_end=reverse)
        g = _scan(a_other.contiguous(), grad_h.contiguous().clone(), not reverse, inplace=True)
        grad_a = g * _shift(h, towards_end=not reverse) if ctx.needs_input_grad[0] else None
        return grad_a, g, None


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, dim: int = -1,
                      reverse: bool = False) -> torch.Tensor:
    """Solve ``h_t = a_t * h_{t-1} + b_t`` (``h_{-1} = 0``) along dimension ``dim``.

    Args:
        a (Tensor): decays, any shape.
        b (Tensor): inputs, same shape as ``a``.
        dim (int): the time dimension. Default: -1.
        reverse (bool): run from the end: ``h_t = a_t * h_{t+1} + b_t``, ``h_L = 0``.

    Returns:
        Tensor: ``h`` with the shape of ``a``; differentiable in ``a`` and ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f'linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} differ')
    shape = a.shape
    dim = dim % a.dim()
    length = shape[dim]
    rows, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    if inner == 1:
        # time is the innermost dim: make it the outer one (one transpose each way) so that a
        # step is a contiguous block of all rows
        def to3(t):
            return t.reshape(rows, length).t().contiguous().view(1, length, rows)
        h = _LinearRecurrence.apply(to3(a), to3(b), reverse)
        return h.view(length, rows).t().reshape(shape)
    h = _LinearRecurrence.apply(a.contiguous().view(rows, length, inner),
                                b.contiguous().view(rows, length, inner), reverse)
    return h.reshape(shape)


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


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Float32 set-up of the sequential twin: (u, delta, A, B, C), B/C expanded to channels."""
    batch, k_dirs, n_state, length = _check_layout(u, delta, A, B, C, None, delta_bias)
    channels = u.shape[1]
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    per_dir = channels // k_dirs

    def expand(t):  # (batch, K, N, L) -> (batch, K*D, N, L), each direction over its D channels
        t = t.float().unsqueeze(2).expand(batch, k_dirs, per_dir, n_state, length)
        return t.reshape(batch, channels, n_state, length)

    return u, delta, A, expand(B), expand(C)


def _torch_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    batch, k_dirs, n_state, length = _check_layout(u, delta, A, B, C, D, delta_bias)
    channels = u.shape[1]
    u32, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # (batch, K, D, N, L) by broadcasting: B and C are shared by the D channels of a direction
    shape5 = (batch, k_dirs, channels // k_dirs, 1, length)
    delta5 = delta.view(shape5)
    a = torch.exp(delta5 * A.float().view(k_dirs, -1, n_state, 1))   # decays in (0, 1]
    b = (delta5 * u32.view(shape5)) * B.float().unsqueeze(2)
    h = linear_recurrence(a, b) * C.float().unsqueeze(2)
    y = (h.squeeze(3) if n_state == 1 else h.sum(3)).reshape(batch, channels, length)
    if D is not None:
        y = torch.addcmul(y, D.float()[:, None], u32)
    return y.to(u.dtype)


def selective_scan_channels_last(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                                 B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                                 delta_bias: Optional[torch.Tensor] = None,
                                 delta_softplus: bool = True, reverse: bool = False) -> torch.Tensor:
    """One direction of the selective scan in the channels-last (token-major) layout.

    The same recurrence as :func:`selective_scan` for a single direction, on the layout that a
    channels-last feature map flattens to, so that SS2D needs no transposes: step ``t`` of the
    scan is a contiguous block of channels.

    Args:
        u (Tensor): inputs, (batch, L, D).
        delta (Tensor): step sizes before bias/softplus, (batch, L, D).
        A (Tensor): state matrix (negative), (D, N).
        B (Tensor): input projections, (batch, L, N).
        C (Tensor): output projections, (batch, L, N).
        D (Tensor, optional): skip connection, (D,).
        delta_bias (Tensor, optional): added to ``delta`` before the softplus, (D,).
        delta_softplus (bool): apply softplus to ``delta``. Default: True.
        reverse (bool): scan from the last token to the first (``h_t`` depends on ``h_{t+1}``),
            i.e. the scan of the flipped sequence, flipped back. Default: False.

    Returns:
        Tensor: (batch, L, D) in the dtype of ``u``; arithmetic is float32 throughout.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            'selective_scan_channels_last: u and delta must both be (batch, L, D); got '
            f'{tuple(u.shape)} and {tuple(delta.shape)}')
    batch, length, channels = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f'selective_scan_channels_last: A must be (D, N) = ({channels}, N); '
                         f'got {tuple(A.shape)}')
    n_state = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.shape != (batch, length, n_state):
            raise ValueError(f'selective_scan_channels_last: {name} must be (batch, L, N) = '
                             f'({batch}, {length}, {n_state}); got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f'selective_scan_channels_last: {name} must be ({channels},); '
                             f'got {tuple(t.shape)}')
    tensors = (u, delta, A, B, C, D, delta_bias)
    track = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    u32, A32, B32, C32 = u.float(), A.float(), B.float(), C.float()
    delta32 = delta.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()
    if delta_softplus:
        delta32 = F.softplus(delta32)
    if not track and n_state == 1:
        # inference: the same arithmetic in place on temporaries (fewer passes over memory)
        a = torch.mul(delta32, A32[:, 0]).exp_()
        owned = delta32 is not delta
        b = (delta32.mul_(u32) if owned else delta32 * u32).mul_(B32)
        y = _scan(a, b, reverse, inplace=True).mul_(C32)
        if D is not None:
            y.addcmul_(u32, D.float())
        return y.to(u.dtype)
    if n_state == 1:
        a = torch.exp(delta32 * A32[:, 0])
        b = delta32 * u32 * B32
    else:  # (batch, L, D, N) flattened to (batch, L, D*N)
        a = torch.exp(delta32[..., None] * A32).flatten(2)
        b = ((delta32 * u32)[..., None] * B32[:, :, None]).flatten(2)
    if track:
        h = _LinearRecurrence.apply(a, b, reverse)
    else:  # a and b are temporaries: scan them in place
        h = _scan(a, b, reverse, inplace=True)
    if n_state == 1:
        y = h * C32
    else:
        y = (h.reshape(batch, length, channels, n_state) * C32[:, :, None]).sum(-1)
    if D is not None:
        y = torch.addcmul(y, u32, D.float())
    return y.to(u.dtype)


def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                             delta_bias: Optional[torch.Tensor] = None,
                             delta_softplus: bool = True, backend: str = 'reference') -> torch.Tensor:
    """Plain sequential selective scan: the definition the fast path is tested against.

    Same arguments as :func:`selective_scan` (``backend`` is accepted and ignored so both share
    one signature). Slow: a Python loop over ``L``.
    """
    _check_layout(u, delta, A, B, C, D, delta_bias)
    u32, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u32.new_zeros(u32.shape[0], u32.shape[1], A.shape[1])
    ys = []
    for t in range(u32.shape[-1]):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u32[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u32
    return y.to(u.dtype)


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
        backend (str): 'auto' (mamba_ssm's kernel for CUDA tensors if installed, else
            'torch'), 'torch' (the parallel PyTorch scan), 'cuda' (mamba_ssm's kernel, an error
            if missing) or 'reference' (the sequential loop).

    Returns:
        Tensor: (batch, K*D, L) in the dtype of ``u``; arithmetic is float32 throughout.
    """
    if backend not in _BACKENDS:
        raise ValueError(f'selective_scan: unknown backend {backend!r}; choose one of {_BACKENDS}')
    _check_layout(u, delta, A, B, C, D, delta_bias)
    if backend == 'reference':
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend in ('auto', 'cuda'):
        kernel = _mamba_ssm_scan() if u.is_cuda or backend == 'cuda' else None
        if backend == 'cuda' and (kernel is None or not u.is_cuda):
            raise RuntimeError(
                "selective_scan(backend='cuda') needs CUDA tensors and the mamba_ssm kernel "
                "(pip install mamba-ssm); use backend='torch' for the portable scan")
        if kernel is not None:
            # the fused kernel takes (batch, K, N, L) B/C as "variable" groups directly
            out = kernel(u.float(), delta.float(), A.float(), B.float(), C.float(),
                         None if D is None else D.float(),
                         delta_bias=None if delta_bias is None else delta_bias.float(),
                         delta_softplus=delta_softplus)
            return out.to(u.dtype)
    return _torch_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
