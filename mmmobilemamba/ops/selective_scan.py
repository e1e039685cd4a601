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
* ``backend='cuda'`` uses ``mamba_ssm``'s fused kernel when installed (optional; never
  required); ``'auto'`` takes it for CUDA tensors when it imports, else the PyTorch scan.
"""
from typing import Optional, Tuple

import math

import torch
import torch.nn.functional as F

__all__ = ['selective_scan', 'selective_scan_reference', 'linear_recurrence']

_SEQUENTIAL_MAX = 64  # up to this length one sequential pass; beyond, two levels of chunks
_BACKENDS = ('auto', 'torch', 'cuda', 'reference')


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` along the last dim with ``h_{-1} = 0``; no autograd.

    Chunked two-level scan. The sequence is cut into ``n`` chunks of ``c ~ sqrt(L)`` steps and
    laid out step-major, ``(c, rows, n)``, so that step ``t`` of every chunk of every row is one
    contiguous block: the ``c`` sequential steps are each one fused multiply-add over
    ``rows * n`` values (Python overhead ``O(sqrt(L))``, work ``O(L)``). The state entering each
    chunk comes from the same recurrence over the chunk ends, one level up, and is added back
    scaled by the running decay. Only products of decays in ``(0, 1]`` are formed, never a
    division, so no step can overflow whatever ``delta`` is.
    """
    length = a.shape[-1]
    lead = a.shape[:-1]
    a2, b2 = a.reshape(-1, length), b.reshape(-1, length)
    rows = a2.shape[0]
    chunk = length if length <= _SEQUENTIAL_MAX else math.ceil(math.sqrt(length))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:
        # identity elements: a = 1, b = 0 leave the carried state unchanged
        a2 = F.pad(a2, (0, pad), value=1.0)
        b2 = F.pad(b2, (0, pad), value=0.0)
    # step-major copies (c, rows, n), made as 2-D transposes (the fastest copy); the loop below
    # works on them in place
    decay = a2.reshape(rows * num_chunks, chunk).t().contiguous().view(chunk, rows, num_chunks)
    state = b2.reshape(rows * num_chunks, chunk).t().contiguous().view(chunk, rows, num_chunks)
    for t in range(1, chunk):
        state[t].addcmul_(decay[t], state[t - 1])
        if num_chunks > 1:
            decay[t].mul_(decay[t - 1])  # decay since the chunk start, for the carry
    if num_chunks > 1:
        carry = _scan(decay[-1], state[-1])             # state at the end of every chunk
        state.addcmul_(decay, F.pad(carry[:, :-1], (1, 0)))  # plus the state entering it
    h = state.view(chunk, rows * num_chunks).t().reshape(rows, num_chunks * chunk)
    return h[:, :length].reshape(*lead, length)


class _LinearRecurrence(torch.autograd.Function):
    """Autograd wrapper: the adjoint of a linear recurrence is the reversed recurrence."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = _scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h = ctx.saved_tensors
        # g_t = grad_h_t + a_{t+1} g_{t+1}: a forward scan on the reversed sequence
        a_next = F.pad(a[..., 1:], (0, 1), value=0.0)
        g = _scan(a_next.flip(-1), grad_h.flip(-1)).flip(-1)
        h_prev = F.pad(h[..., :-1], (1, 0))
        grad_a = g * h_prev if ctx.needs_input_grad[0] else None
        return grad_a, g


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``h_t = a_t * h_{t-1} + b_t`` (``h_{-1} = 0``) along the last dimension.

    Args:
        a (Tensor): decays, any shape ``(..., L)``.
        b (Tensor): inputs, same shape as ``a``.

    Returns:
        Tensor: ``h`` with the shape of ``a``; differentiable in ``a`` and ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f'linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} differ')
    return _LinearRecurrence.apply(a.contiguous(), b.contiguous())


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


def _mamba_ssm_scan():
    """The fused CUDA kernel of ``mamba_ssm`` if importable, else None."""
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
