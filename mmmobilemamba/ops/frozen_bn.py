"""A conv's frozen-statistics BatchNorm and the elementwise ops after it, as one custom op.

``mmmobilemamba::frozen_bn_act``:
``y = [outer +] sample_scale[b] * ([residual +] BN2(scale * relu(BN1(x))))``, both BatchNorms
in eval mode (running statistics), the ReLU, the per-channel scale (a 1x1 depthwise conv
without bias), the second BatchNorm, the residual, the per-image factor (drop path: a 0/1
mask times ``sample_gain``) and the outer residual each optional. Differentiable in ``x``, both
BatchNorms' weight and bias, the scale, the residual and the outer map (the running
statistics and the drop-path mask are constants); backward ``frozen_bn_act_backward``.

With frozen statistics (a backbone trained with ``norm_eval``, or run undeployed in eval
mode) a BatchNorm is a per-channel affine map, and a conv's BatchNorm, ReLU and residual add
are elementwise: one kernel forwards, one backwards, instead of one for each op and its
gradient (Triton kernels, :mod:`.triton_frozen_bn`; the PyTorch twin here). The layers use it
on the Triton path only (their ``scan_backend``); elsewhere they run their modules.

``mmmobilemamba::fold_frozen_bn``: the frozen BatchNorm after a conv (and, for
``x + BN(dwconv(x))``, the identity) folded into the conv's weight and bias, differentiably:
the residual depthwise conv then trains as one conv, whose input gradient holds the
identity's (no gradient add); backward ``fold_frozen_bn_backward``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .memory_format import memory_format_of
from .op_backends import triton_kernels

__all__ = ['frozen_bn_act', 'frozen_bn_act_torch', 'frozen_bn_act_backward_torch',
           'fold_frozen_bn', 'fold_frozen_bn_torch', 'fold_frozen_bn_backward_torch']

BatchNormParams = Tuple[Tensor, Tensor, Tensor, Tensor, float]


def _channels(t: Tensor) -> Tensor:
    return t.float().reshape(1, -1, 1, 1)


def _affine(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
            eps: float) -> Tuple[Tensor, Tensor]:
    """A frozen BatchNorm as ``x * scale + shift`` (float32, (1, C, 1, 1) each); also its
    inverse standard deviation."""
    inv_std = torch.rsqrt(_channels(var) + eps)
    return _channels(weight) * inv_std, inv_std


def frozen_bn_act_torch(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                        running_var: Tensor, eps: float, relu: bool = False,
                        scale: Optional[Tensor] = None, second: Optional[Sequence] = None,
                        residual: Optional[Tensor] = None, sample_scale: Optional[Tensor] = None,
                        sample_gain: float = 1.0, outer: Optional[Tensor] = None) -> Tensor:
    """Twin of the Triton kernel:
    ``[outer +] sample_scale * ([residual +] BN2(scale * relu(BN1(x))))`` in ``x``'s dtype and
    memory format, computed in float32.

    Args:
        x (Tensor): a conv's output (B, C, H, W).
        weight (Tensor): the BatchNorm's weight (C,).
        bias (Tensor): its bias (C,).
        running_mean (Tensor): its running mean (C,).
        running_var (Tensor): its running variance (C,).
        eps (float): its epsilon.
        relu (bool): apply a ReLU after it. Default: False.
        scale (Tensor, optional): per-channel scale after that, C values (a depthwise 1x1
            conv's weight (C, 1, 1, 1)).
        second (tuple, optional): a second frozen BatchNorm after that, ``(weight, bias,
            running_mean, running_var, eps)``.
        residual (Tensor, optional): added after that (B, C, H, W).
        sample_scale (Tensor, optional): a factor per image (B,) after that, times
            ``sample_gain``: drop path's 0/1 mask and ``1 / keep probability``.
        sample_gain (float): see ``sample_scale``. Default: 1.
        outer (Tensor, optional): added at the end (B, C, H, W): the residual around a
            drop path.
    """
    s1, inv1 = _affine(weight, bias, running_mean, running_var, eps)
    y = (x.float() - _channels(running_mean)) * s1 + _channels(bias)
    if relu:
        y = torch.relu(y)
    if scale is not None:
        y = y * _channels(scale)
    if second is not None:
        w2, b2, mean2, var2, eps2 = second
        y = (y - _channels(mean2)) * _affine(w2, b2, mean2, var2, eps2)[0] + _channels(b2)
    if residual is not None:
        y = y + residual.float()
    if sample_scale is not None:
        y = y * (sample_scale.float() * sample_gain).view(-1, 1, 1, 1)
    if outer is not None:
        y = y + outer.float()
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def frozen_bn_act_backward_torch(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor,
                                 running_mean: Tensor, running_var: Tensor, eps: float,
                                 relu: bool = False, scale: Optional[Tensor] = None,
                                 second: Optional[Sequence] = None,
                                 residual_grad: bool = False,
                                 sample_scale: Optional[Tensor] = None,
                                 sample_gain: float = 1.0) -> Tuple[Tensor, ...]:
    """Twin of the backward kernel: the gradients (float32) of ``x`` (in its memory format),
    the weight, the bias, the scale, the second BatchNorm's weight and bias and, with
    ``residual_grad`` and drop-path factors, the residual's (in ``x``'s memory format); empty
    where absent. Without factors the residual's gradient is the incoming one, as the outer
    map's."""
    dims = (0, 2, 3)
    s1, inv1 = _affine(weight, bias, running_mean, running_var, eps)
    x_hat = (x.float() - _channels(running_mean)) * inv1
    pre = x_hat * _channels(weight) + _channels(bias)
    act = torch.relu(pre) if relu else pre
    g = grad.float()
    dw2, db2, dscale, dres = (g.new_empty(0) for _ in range(4))  # absent: distinct empties
    if sample_scale is not None:
        g = g * (sample_scale.float() * sample_gain).view(-1, 1, 1, 1)
        if residual_grad:
            dres = g.contiguous(memory_format=memory_format_of(x))
    if second is not None:
        w2, b2, mean2, var2, eps2 = second
        s2, inv2 = _affine(w2, b2, mean2, var2, eps2)
        value = act * _channels(scale) if scale is not None else act
        dw2, db2 = (g * (value - _channels(mean2)) * inv2).sum(dims), g.sum(dims)
        g = g * s2
    if scale is not None:
        dscale = (g * act).sum(dims).reshape(scale.shape)
        g = g * _channels(scale)
    if relu:
        g = g * (pre > 0)
    dx = (g * s1).contiguous(memory_format=memory_format_of(x))
    return dx, (g * x_hat).sum(dims), g.sum(dims), dscale, dw2, db2, dres


def _second(weight2, bias2, mean2, var2, eps2) -> Optional[BatchNormParams]:
    return None if weight2 is None else (weight2, bias2, mean2, var2, eps2)


@torch.library.custom_op('mmmobilemamba::frozen_bn_act', mutates_args=())
def _frozen_bn_act(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                   running_var: Tensor, eps: float, relu: bool, scale: Optional[Tensor],
                   weight2: Optional[Tensor], bias2: Optional[Tensor], mean2: Optional[Tensor],
                   var2: Optional[Tensor], eps2: float, residual: Optional[Tensor],
                   sample_scale: Optional[Tensor], sample_gain: float, outer: Optional[Tensor],
                   backend: str) -> Tensor:
    kernels = triton_kernels(backend, 'triton_frozen_bn')
    impl = frozen_bn_act_torch if kernels is None else kernels.frozen_bn_act
    return impl(x, weight, bias, running_mean, running_var, eps, relu, scale,
                _second(weight2, bias2, mean2, var2, eps2), residual, sample_scale, sample_gain,
                outer)


@_frozen_bn_act.register_fake
def _(x, weight, bias, running_mean, running_var, eps, relu, scale, weight2, bias2, mean2,
      var2, eps2, residual, sample_scale, sample_gain, outer, backend):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype,
                       memory_format=memory_format_of(x))


@torch.library.custom_op('mmmobilemamba::frozen_bn_act_backward', mutates_args=())
def _frozen_bn_act_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor,
                            running_mean: Tensor, running_var: Tensor, eps: float, relu: bool,
                            scale: Optional[Tensor], weight2: Optional[Tensor],
                            bias2: Optional[Tensor], mean2: Optional[Tensor],
                            var2: Optional[Tensor], eps2: float, residual_grad: bool,
                            sample_scale: Optional[Tensor], sample_gain: float,
                            backend: str) -> List[Tensor]:
    """The gradients of ``x``, weight, bias, scale, weight2, bias2 (each in its input's dtype)
    and, with ``residual_grad`` and drop-path factors, the residual's (in ``x``'s dtype);
    empty float32 where absent; the maps in ``x``'s memory format."""
    kernels = triton_kernels(backend, 'triton_frozen_bn')
    impl = frozen_bn_act_backward_torch if kernels is None else kernels.frozen_bn_act_backward
    grads = impl(grad, x, weight, bias, running_mean, running_var, eps, relu, scale,
                 _second(weight2, bias2, mean2, var2, eps2), residual_grad, sample_scale,
                 sample_gain)
    # autograd's rule: each in its input's dtype (a no-op after the kernel, which writes so)
    return [g if t is None or not g.numel() else g.to(t.dtype)
            for g, t in zip(grads, (x, weight, bias, scale, weight2, bias2, x))]


@_frozen_bn_act_backward.register_fake
def _(grad, x, weight, bias, running_mean, running_var, eps, relu, scale, weight2, bias2, mean2,
      var2, eps2, residual_grad, sample_scale, sample_gain, backend):
    def empty():
        return torch.empty(0, device=x.device, dtype=torch.float32)

    def like(t):
        return empty() if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    def map_like(t):
        return torch.empty(t.shape, device=t.device, dtype=t.dtype,
                           memory_format=memory_format_of(t))

    dres = map_like(x) if residual_grad and sample_scale is not None else empty()
    return [map_like(x)] + [like(t) for t in (weight, bias, scale, weight2, bias2)] + [dres]


def _setup(ctx, inputs, output):
    (x, weight, bias, mean, var, eps, relu, scale, weight2, bias2, mean2, var2, eps2, residual,
     sample_scale, sample_gain, outer, backend) = inputs
    ctx.eps, ctx.relu, ctx.eps2, ctx.sample_gain, ctx.backend = eps, relu, eps2, sample_gain, \
        backend
    ctx.has_residual, ctx.has_outer = residual is not None, outer is not None
    ctx.save_for_backward(x, weight, bias, mean, var, scale, weight2, bias2, mean2, var2,
                          sample_scale)


def _backward(ctx, grad):
    (x, weight, bias, mean, var, scale, weight2, bias2, mean2, var2,
     sample_scale) = ctx.saved_tensors
    dx, dw, db, dscale, dw2, db2, dres = _frozen_bn_act_backward(
        grad, x, weight, bias, mean, var, ctx.eps, ctx.relu, scale, weight2, bias2, mean2, var2,
        ctx.eps2, ctx.has_residual, sample_scale, ctx.sample_gain, ctx.backend)
    second = weight2 is not None
    if ctx.has_residual:
        dres = dres if sample_scale is not None else grad
    return (dx, dw, db, None, None, None, None, dscale if scale is not None else None,
            dw2 if second else None, db2 if second else None, None, None, None,
            dres if ctx.has_residual else None, None, None, grad if ctx.has_outer else None,
            None)


_frozen_bn_act.register_autograd(_backward, setup_context=_setup)


def frozen_bn_act(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                  running_var: Tensor, eps: float, relu: bool = False,
                  scale: Optional[Tensor] = None, second: Optional[BatchNormParams] = None,
                  residual: Optional[Tensor] = None, sample_scale: Optional[Tensor] = None,
                  sample_gain: float = 1.0, outer: Optional[Tensor] = None,
                  backend: str = 'torch') -> Tensor:
    """``[outer +] sample_scale * ([residual +] BN2(scale * relu(BN1(x))))`` with frozen
    statistics, in ``x``'s dtype and memory format, differentiable: one op. See
    :func:`frozen_bn_act_torch` for the arguments; ``backend`` 'torch' (the twin) or 'triton'
    (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if x.dim() != 4:
        raise ValueError(f'frozen_bn_act: x must be a (B, C, H, W) map, got {tuple(x.shape)}')
    channels = x.shape[1]
    params = [('weight', weight), ('bias', bias), ('running_mean', running_mean),
              ('running_var', running_var)]
    if scale is not None:
        params.append(('scale', scale))
    if second is not None:
        if len(second) != 5:
            raise ValueError('frozen_bn_act: second is (weight, bias, running_mean, '
                             f'running_var, eps), got {len(second)} values')
        params += [(f'second[{i}]', t) for i, t in enumerate(second[:4])]
    for name, t in params:
        if t is None or t.numel() != channels:
            raise ValueError(f'frozen_bn_act: {name} must hold one value per channel '
                             f'({channels}), got {None if t is None else tuple(t.shape)} (an '
                             'affine BatchNorm with running statistics)')
    for name, t in (('residual', residual), ('outer', outer)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f'frozen_bn_act: {name} {tuple(t.shape)} must be shaped as x '
                             f'{tuple(x.shape)}')
    if sample_scale is not None and sample_scale.shape != (x.shape[0],):
        raise ValueError(f'frozen_bn_act: sample_scale must hold one value per image '
                         f'({x.shape[0]},), got {tuple(sample_scale.shape)}')
    w2, b2, mean2, var2, eps2 = second if second is not None else (None,) * 4 + (0.0,)
    return _frozen_bn_act(x, weight, bias, running_mean, running_var, float(eps), relu, scale,
                          w2, b2, mean2, var2, float(eps2), residual, sample_scale,
                          float(sample_gain), outer, backend)


# ------------------------------------------------------------------ folded into a conv
def fold_frozen_bn_torch(weight: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                         running_mean: Tensor, running_var: Tensor, eps: float,
                         identity: bool = False,
                         dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Twin of the Triton kernel: ``(weight', bias')`` with ``conv(x, weight', bias') =
    BN(conv(x, weight))`` for a frozen BatchNorm, plus ``x`` with ``identity``, in ``dtype``
    (None: the dtypes of ``weight`` and ``bn_bias``).

    Args:
        weight (Tensor): the conv's weight (C, C_in / groups, kh, kw), no bias.
        bn_weight, bn_bias, running_mean, running_var (Tensor): the BatchNorm's (C,).
        eps (float): its epsilon.
        identity (bool): also fold ``x +``: a depthwise conv (C, 1, kh, kw) with odd kernel
            sides, one more at its centre tap. Default: False.
        dtype (torch.dtype, optional): the dtype the conv computes in (autocast's): the
            folded weight and bias come out in it, so that the conv casts neither them nor
            their gradients. Default: None.
    """
    inv_std = torch.rsqrt(running_var.float() + eps)
    scale = bn_weight.float() * inv_std
    folded = weight.float() * scale.view(-1, *([1] * (weight.dim() - 1)))
    if identity:
        folded = folded.reshape(weight.shape[0], -1)
        centre = (folded.shape[1] - 1) // 2
        folded = torch.cat([folded[:, :centre], folded[:, centre:centre + 1] + 1,
                            folded[:, centre + 1:]], dim=1).view(weight.shape)
    bias = bn_bias.float() - running_mean.float() * scale
    return folded.to(dtype or weight.dtype).contiguous(), bias.to(dtype or bn_bias.dtype)


def fold_frozen_bn_backward_torch(grad_weight: Tensor, grad_bias: Tensor, weight: Tensor,
                                  bn_weight: Tensor, running_mean: Tensor, running_var: Tensor,
                                  eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Twin of the backward kernel: the gradients (float32) of the weight and of the
    BatchNorm's weight and bias."""
    inv_std = torch.rsqrt(running_var.float() + eps)
    scale = bn_weight.float() * inv_std
    view = (-1,) + (1,) * (weight.dim() - 1)
    grad_w = grad_weight.float()
    grad_scale = (grad_w * weight.float()).flatten(1).sum(1) - running_mean.float() * \
        grad_bias.float()
    return ((grad_w * scale.view(view)).contiguous(), grad_scale * inv_std,
            grad_bias.to(torch.float32, copy=True))  # an output is never an input


@torch.library.custom_op('mmmobilemamba::fold_frozen_bn', mutates_args=())
def _fold_frozen_bn(weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor,
                    running_var: Tensor, eps: float, identity: bool,
                    dtype: Optional[torch.dtype], backend: str) -> Tuple[Tensor, Tensor]:
    kernels = triton_kernels(backend, 'triton_frozen_bn')
    impl = fold_frozen_bn_torch if kernels is None else kernels.fold_frozen_bn
    return impl(weight, bn_weight, bn_bias, running_mean, running_var, eps, identity, dtype)


@_fold_frozen_bn.register_fake
def _(weight, bn_weight, bn_bias, running_mean, running_var, eps, identity, dtype, backend):
    return (torch.empty_like(weight, dtype=dtype or weight.dtype,
                             memory_format=torch.contiguous_format),
            torch.empty_like(bn_bias, dtype=dtype or bn_bias.dtype,
                             memory_format=torch.contiguous_format))


@torch.library.custom_op('mmmobilemamba::fold_frozen_bn_backward', mutates_args=())
def _fold_frozen_bn_backward(grad_weight: Tensor, grad_bias: Tensor, weight: Tensor,
                             bn_weight: Tensor, running_mean: Tensor, running_var: Tensor,
                             eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of the weight and of the BatchNorm's weight and bias, each in its
    input's dtype."""
    kernels = triton_kernels(backend, 'triton_frozen_bn')
    impl = fold_frozen_bn_backward_torch if kernels is None else \
        kernels.fold_frozen_bn_backward
    dweight, dw, db = impl(grad_weight, grad_bias, weight, bn_weight, running_mean, running_var,
                           eps)
    return dweight.to(weight.dtype), dw.to(bn_weight.dtype), db.to(bn_weight.dtype)


@_fold_frozen_bn_backward.register_fake
def _(grad_weight, grad_bias, weight, bn_weight, running_mean, running_var, eps, backend):
    return (torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(bn_weight, memory_format=torch.contiguous_format),
            torch.empty_like(bn_weight, memory_format=torch.contiguous_format))


def _fold_setup(ctx, inputs, output):
    weight, bn_weight, bn_bias, mean, var, eps, identity, dtype, backend = inputs
    ctx.eps, ctx.backend = eps, backend
    ctx.save_for_backward(weight, bn_weight, mean, var)


def _fold_backward(ctx, grad_weight, grad_bias):
    weight, bn_weight, mean, var = ctx.saved_tensors
    dweight, dw, db = _fold_frozen_bn_backward(grad_weight, grad_bias, weight, bn_weight, mean,
                                               var, ctx.eps, ctx.backend)
    return dweight, dw, db, None, None, None, None, None, None


_fold_frozen_bn.register_autograd(_fold_backward, setup_context=_fold_setup)


def fold_frozen_bn(weight: Tensor, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor,
                   running_var: Tensor, eps: float, identity: bool = False,
                   dtype: Optional[torch.dtype] = None,
                   backend: str = 'torch') -> Tuple[Tensor, Tensor]:
    """A conv's weight and bias with the frozen BatchNorm after it (and, with ``identity``,
    the input) folded in, differentiable in the weight and the BatchNorm's weight and bias:
    one op each way over the weights, so that ``x + BN(dwconv(x))`` trains as one conv whose
    input gradient holds the identity's (no gradient add). See :func:`fold_frozen_bn_torch`
    for the arguments; ``backend`` 'torch' (the twin) or 'triton' (CUDA, or CPU under
    ``TRITON_INTERPRET=1``)."""
    channels = weight.shape[0]
    for name, t in (('bn_weight', bn_weight), ('bn_bias', bn_bias),
                    ('running_mean', running_mean), ('running_var', running_var)):
        if t is None or t.shape != (channels,):
            raise ValueError(f'fold_frozen_bn: {name} must be ({channels},) for a weight of '
                             f'{tuple(weight.shape)}, got {None if t is None else tuple(t.shape)}')
    if identity and (weight.dim() != 4 or weight.shape[1] != 1
                     or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0):
        raise ValueError('fold_frozen_bn: identity needs a depthwise weight (C, 1, kh, kw) with '
                         f'odd sides, got {tuple(weight.shape)}')
    return _fold_frozen_bn(weight, bn_weight, bn_bias, running_mean, running_var, float(eps),
                           identity, dtype, backend)
