"""The selective scan's PyTorch backend: the chunked linear recurrence and SS2D's two-direction
scan (forward and its explicit backward), on any device, no compilation.

These are the plain twins of the Triton kernels of :mod:`.triton_scan` (same arguments, same
results) and what runs on CPU; :mod:`.scan_ops` registers both as custom ops.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['chunked_recurrence', 'shift',
           'ss2d_scan_forward_torch', 'ss2d_scan_backward_torch', 'check_ss2d_scan_inputs']

_SEQUENTIAL_MAX = 16  # up to this length one sequential pass; beyond, two levels of chunks


def chunked_recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool = False,
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
        carry = chunked_recurrence(decay[:, :, end].contiguous(),
                                   state[:, :, end].contiguous(), reverse, inplace=True)
        if reverse:  # plus the state entering each chunk from its neighbour
            state[:, :-1].addcmul_(decay[:, :-1], carry[:, 1:, None])
        else:
            state[:, 1:].addcmul_(decay[:, 1:], carry[:, :-1, None])
    h = state.view(rows, num_chunks * chunk, inner)
    return h[:, :length] if pad else h


def shift(x: torch.Tensor, towards_end: bool) -> torch.Tensor:
    """``x`` moved one step along dim 1 of ``(rows, L, inner)``, zero filled."""
    return F.pad(x[:, :-1], (0, 0, 1, 0)) if towards_end else F.pad(x[:, 1:], (0, 0, 0, 1))


# ------------------------------------------------------------------------ SS2D's scan
def check_ss2d_scan_inputs(u, delta, A_log, B, C, D, delta_bias) -> Tuple[int, int, int, int, int]:
    """Validate the layout of :func:`mmmobilemamba.ops.ss2d_scan`; return (batch, K, d, N, L)."""
    if u.dim() != 3 or delta.dim() != 4:
        raise ValueError(f'ss2d_scan: u must be (batch, d, L) and delta (batch, K, d, L); got '
                         f'{tuple(u.shape)} and {tuple(delta.shape)}')
    batch, channels, length = u.shape
    directions = delta.shape[1]
    if delta.shape != (batch, directions, channels, length) or directions not in (1, 2):
        raise ValueError(f'ss2d_scan: delta must be (batch, K, d, L) = ({batch}, K, {channels}, '
                         f'{length}) with K = 1 or 2 directions; got {tuple(delta.shape)}')
    if A_log.dim() != 2 or A_log.shape[0] != directions * channels:
        raise ValueError(f'ss2d_scan: A_log must be (K*d, N) = ({directions * channels}, N); '
                         f'got {tuple(A_log.shape)}')
    n_state = A_log.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.shape != (batch, directions, n_state, length):
            raise ValueError(f'ss2d_scan: {name} must be (batch, K, N, L) = ({batch}, '
                             f'{directions}, {n_state}, {length}); got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t.shape != (directions * channels,):
            raise ValueError(f'ss2d_scan: {name} must be ({directions * channels},); got '
                             f'{tuple(t.shape)}')
    return batch, directions, channels, n_state, length


def _direction_terms(u_t, delta_k, A_k, B_k, bias_k):
    """One direction's step sizes, decays and inputs, token-major: ``dt (b, L, d)``,
    ``a = exp(dt A)`` and ``dt u B``, both ``(b, L, d, N)``."""
    # token-major memory from here on (elementwise results follow their inputs' layout)
    z = (delta_k.float().transpose(1, 2) + bias_k.float()).contiguous()  # (b, L, d)
    dt = F.softplus(z)
    a = torch.exp(dt[..., None] * A_k.float())
    x = dt * u_t
    bx = x[..., None] * B_k.float().transpose(1, 2)[:, :, None, :]
    return z, dt, x, a, bx


def ss2d_scan_forward_torch(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor,
                            B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                            delta_bias: torch.Tensor) -> torch.Tensor:
    """The twin of the Triton kernel ``ss2d_scan_forward``: see
    :func:`mmmobilemamba.ops.ss2d_scan` for the arguments (``A = -exp(A_log)``). Returns ``y``
    (batch, K, L, d), float32, contiguous: direction ``k``'s read-out plus its skip term
    ``D_k u``.

    Direction ``k = 1`` scans from the last token to the first; the directions run as the two
    channel groups of one chunked scan (direction 1 flipped in time), which halves the Python
    steps of two scans.
    """
    batch, directions, channels, n_state, length = check_ss2d_scan_inputs(
        u, delta, A_log, B, C, D, delta_bias)
    A = -torch.exp(A_log.float())
    u_t = u.float().transpose(1, 2)                                     # (b, L, d)
    decays, inputs = [], []
    for k in range(directions):
        part = slice(k * channels, (k + 1) * channels)
        _, _, _, a, bx = _direction_terms(u_t, delta[:, k], A[part], B[:, k], delta_bias[part])
        if k == 1:
            a, bx = a.flip(1), bx.flip(1)
        decays.append(a.view(batch, length, -1))
        inputs.append(bx.view(batch, length, -1))
    h = chunked_recurrence(torch.cat(decays, 2), torch.cat(inputs, 2), inplace=True)
    h = h.view(batch, length, directions, channels, n_state)
    y = u_t.new_empty(batch, directions, length, channels)
    for k in range(directions):
        c_k = C[:, k].float().transpose(1, 2)                           # (b, L, N)
        h_k = h[:, :, k] if k == 0 else h[:, :, k].flip(1)              # token order
        if n_state == 1:
            torch.mul(h_k[..., 0], c_k, out=y[:, k])
        else:
            torch.sum(h_k * c_k[:, :, None, :], -1, out=y[:, k])
        y[:, k].addcmul_(u_t, D[k * channels:(k + 1) * channels].float())
    return y


def ss2d_scan_backward_torch(grad_y: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                             A_log: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                             delta_bias: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`ss2d_scan_forward_torch` given ``grad_y`` (batch, K, L, d), any
    strides (stride 0 along K too; read where it is): ``(du, ddelta, dA_log, dB, dC, dD,
    ddelta_bias)`` in float32, shaped as the inputs.

    The states are recomputed (nothing is stored by the forward); the adjoint of the linear
    recurrence is the reversed recurrence, ``g_t = dL/dh_t + a_{t+1} g_{t+1}``.
    """
    batch, directions, channels, n_state, length = check_ss2d_scan_inputs(
        u, delta, A_log, B, C, D, delta_bias)
    A = -torch.exp(A_log.float())
    if tuple(grad_y.shape) != (batch, directions, length, channels):
        raise ValueError(f'ss2d_scan_backward: grad_y must be (batch, K, L, d) = '
                         f'{(batch, directions, length, channels)}, the shape of the scan\'s '
                         f'output; got {tuple(grad_y.shape)}')
    u_t = u.float().transpose(1, 2)
    du = torch.zeros(batch, length, channels, device=u.device)  # token-major
    ddelta = torch.empty(batch, directions, length, channels, device=u.device)  # token-major
    dA, dB, dC, dD, dbias = [], [], [], [], []
    flat = (batch, length, channels * n_state)
    for k in range(directions):
        rev = k == 1
        part = slice(k * channels, (k + 1) * channels)
        A_k = A[part].float()
        dy = grad_y[:, k].float()                                       # (b, L, d)
        z, dt, x, a, bx = _direction_terms(u_t, delta[:, k], A_k, B[:, k], delta_bias[part])
        b_k = B[:, k].float().transpose(1, 2)[:, :, None, :]            # (b, L, 1, N)
        c_k = C[:, k].float().transpose(1, 2)[:, :, None, :]
        h = chunked_recurrence(a.reshape(flat), bx.reshape(flat), rev).view_as(a)
        g = chunked_recurrence(shift(a.view(flat), towards_end=rev).contiguous(),
                               (dy[..., None] * c_k).reshape(flat), not rev).view_as(a)
        da_a = g * shift(h.view(flat), towards_end=not rev).view_as(a) * a  # dL/da * a
        dx = (g * b_k).sum(-1)                                          # (b, L, d)
        dz = (dx * u_t + (da_a * A_k).sum(-1)) * torch.sigmoid(z)       # softplus'
        du.addcmul_(dx, dt).addcmul_(dy, D[part].float())
        ddelta[:, k] = dz
        dA.append((da_a * dt[..., None]).sum((0, 1)))
        dB.append((g * x[..., None]).sum(2))                            # (b, L, N)
        dC.append((dy[..., None] * h).sum(2))
        dD.append((dy * u_t).sum((0, 1)))
        dbias.append(dz.sum((0, 1)))
    # token-major memory, as the Triton kernel writes them
    return (du.transpose(1, 2), ddelta.transpose(2, 3), torch.cat(dA) * A,  # dA/dA_log = A
            torch.stack(dB, 1).transpose(2, 3), torch.stack(dC, 1).transpose(2, 3),
            torch.cat(dD), torch.cat(dbias))
