"""The scan backends as custom ops (``torch.library``): what ``torch.compile`` keeps whole.

Dynamo does not trace into a custom op: it sees one node with a fake (shape-only)
implementation, so the model compiles as one graph (``fullgraph=True``) whichever backend
runs, and sizes stay symbolic (no recompilation per input size). In eager mode each op is one
dispatched call, however many kernels its PyTorch implementation launches.

* ``mmmobilemamba::linear_recurrence(a, b, reverse, backend)``: ``h_t = a_t h_{t-1} + b_t``,
  differentiable (its backward is the reversed recurrence, by the same op).
* ``mmmobilemamba::ss2d_scan(u, delta, A_log, B, C, D, delta_bias, backend)`` and its backward
  ``mmmobilemamba::ss2d_scan_backward``: SS2D's two-direction scan, fused. The forward returns
  each direction's output, ``y`` (batch, K, L, d) float32 contiguous (the op that reads ``y``
  next sums the directions); the backward reads ``grad_y`` of that shape by its strides
  (stride 0 along K, one gradient expanded over the directions, included).

``backend`` is 'torch' (:mod:`.scan_torch`, any device) or 'triton' (:mod:`.triton_scan`,
CUDA). The Triton module is looked up when called, never at import.
"""
from typing import Tuple

import torch
from torch import Tensor

from . import scan_torch
from .op_backends import triton_kernels

__all__ = ['linear_recurrence', 'ss2d_scan_op']


# ------------------------------------------------------------------- linear recurrence
@torch.library.custom_op('mmmobilemamba::linear_recurrence', mutates_args=())
def linear_recurrence(a: Tensor, b: Tensor, reverse: bool, backend: str) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (``reverse``: ``h_t = a_t h_{t+1} + b_t``) along dim 1 of
    ``(rows, L, inner)`` tensors, zero initial state; float32, contiguous; differentiable."""
    kernels = triton_kernels(backend, 'triton_scan')
    if kernels is not None:
        return kernels.recurrence(a, b, reverse)
    h = scan_torch.chunked_recurrence(a.float().contiguous(), b.float().contiguous(), reverse)
    return h.contiguous()


@linear_recurrence.register_fake
def _(a, b, reverse, backend):
    return torch.empty_like(a, dtype=torch.float32, memory_format=torch.contiguous_format)


def _recurrence_setup(ctx, inputs, output):
    a, _, reverse, backend = inputs
    ctx.reverse, ctx.backend = reverse, backend
    ctx.save_for_backward(a, output)


def _recurrence_backward(ctx, grad_h):
    # the adjoint of a linear recurrence is the reversed recurrence:
    # g_t = grad_h_t + a_{t+1} g_{t+1}, grad_a_t = g_t h_{t-1}
    a, h = ctx.saved_tensors
    reverse = ctx.reverse
    g = linear_recurrence(scan_torch.shift(a.float(), towards_end=reverse).contiguous(),
                          grad_h.contiguous(), not reverse, ctx.backend)
    grad_a = None
    if ctx.needs_input_grad[0]:
        grad_a = (g * scan_torch.shift(h, towards_end=not reverse)).to(a.dtype)
    return grad_a, g.to(grad_h.dtype), None, None


linear_recurrence.register_autograd(_recurrence_backward, setup_context=_recurrence_setup)


# ------------------------------------------------------------------- SS2D's scan
@torch.library.custom_op('mmmobilemamba::ss2d_scan', mutates_args=())
def ss2d_scan_op(u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor,
                 delta_bias: Tensor, backend: str) -> Tensor:
    """SS2D's two-direction scan, per direction: ``y`` (batch, K, L, d) float32, contiguous,
    ``y[:, k]`` direction ``k``'s read-out plus its skip term ``D_k u``; see
    :func:`mmmobilemamba.ops.ss2d_scan`."""
    kernels = triton_kernels(backend, 'triton_scan')
    impl = scan_torch.ss2d_scan_forward_torch if kernels is None else kernels.ss2d_scan_forward
    return impl(u, delta, A_log, B, C, D, delta_bias)


@ss2d_scan_op.register_fake
def _(u, delta, A_log, B, C, D, delta_bias, backend):
    batch, channels, length = u.shape
    return u.new_empty(batch, delta.shape[1], length, channels, dtype=torch.float32)


def _token_major(like: Tensor) -> Tensor:
    """An empty tensor shaped and typed as ``like`` whose two last dims are transposed in
    memory: the layout the backward implementations write their per-token gradients in."""
    shape = tuple(like.shape)
    stride, size = [0] * len(shape), 1
    order = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
    for dim in reversed(order):
        stride[dim] = size
        size *= shape[dim]
    return torch.empty_strided(shape, stride, device=like.device, dtype=like.dtype)


@torch.library.custom_op('mmmobilemamba::ss2d_scan_backward', mutates_args=())
def ss2d_scan_backward_op(grad_y: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor,
                          C: Tensor, D: Tensor, delta_bias: Tensor,
                          backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                 Tensor]:
    """The gradients of ``ss2d_scan`` given ``grad_y`` (batch, K, L, d) of any strides,
    ``(du, ddelta, dA_log, dB, dC, dD, ddelta_bias)``, each in its input's dtype (autograd's
    rule; bfloat16 under autocast): the per-token ones token-major in memory, the parameters'
    contiguous. The Triton kernels store them so (the cast below is then no op); the twin
    computes float32."""
    kernels = triton_kernels(backend, 'triton_scan')
    impl = scan_torch.ss2d_scan_backward_torch if kernels is None else kernels.ss2d_scan_backward
    grads = impl(grad_y, u, delta, A_log, B, C, D, delta_bias)
    return tuple(g.to(t.dtype) for g, t in zip(grads, (u, delta, A_log, B, C, D, delta_bias)))


@ss2d_scan_backward_op.register_fake
def _(grad_y, u, delta, A_log, B, C, D, delta_bias, backend):
    return (_token_major(u), _token_major(delta), A_log.new_empty(A_log.shape), _token_major(B),
            _token_major(C), D.new_empty(D.shape), delta_bias.new_empty(delta_bias.shape))


def _ss2d_setup(ctx, inputs, output):
    *tensors, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(*tensors)


def _ss2d_backward(ctx, grad_y):
    return tuple(ss2d_scan_backward_op(grad_y, *ctx.saved_tensors, ctx.backend)) + (None,)


ss2d_scan_op.register_autograd(_ss2d_backward, setup_context=_ss2d_setup)
