"""Triton kernels of the frozen-statistics BatchNorm chain (twin in :mod:`.frozen_bn`).

``y = [outer +] sample_scale[b] * ([residual +] BN2(scale * act(BN1(x))))`` with both
BatchNorms in eval mode (running statistics: per-channel affine maps), the activation (ReLU),
the per-channel scale (a 1x1 depthwise conv without bias), the residuals and the drop-path
factor optional: what a conv's BatchNorm and the elementwise ops after it are while a backbone
trains with frozen statistics (``norm_eval``) or runs undeployed.

* forward: one elementwise kernel over (image, channel block, pixel block) tiles;
* backward: one kernel whose programs own a block of channels (or a share of it, see
  :func:`~.triton_common.shares`): they recompute the forward, write the
  input's gradient and sum the parameters' gradients (both BatchNorms' weight and bias, the
  scale) as they go; channels shared by several programs are summed by one reduction more.

* :func:`fold_frozen_bn`: the BatchNorm (and an identity) folded into the conv before it, a
  kernel forwards and one backwards over the weights (a few thousand values), for
  ``x + BN(dwconv(x))``: one conv, whose input gradient then holds the identity's (no add).

Inputs are read where they are (any strides), results written in the op's dtypes, maps in the
input's memory format. Registers nothing (:mod:`.frozen_bn` makes the custom op), so that
tests may reload it under ``TRITON_INTERPRET=1``.
"""
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .memory_format import memory_format_of
from .triton_common import column_sums, shares, sum_along

__all__ = ['frozen_bn_act', 'frozen_bn_act_backward', 'fold_frozen_bn', 'fold_frozen_bn_backward']

_TILE = 1024  # values per program and step (channels x pixels)
_PIXELS = 256  # at most this many pixels of a channel per program and step


@triton.jit
def _affine(w_ptr, b_ptr, mean_ptr, var_ptr, chans, cmask, eps):
    """A frozen BatchNorm's per-channel ``(scale, shift, mean, inverse std)``, float32."""
    weight = tl.load(w_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    inv_std = 1.0 / tl.sqrt(tl.load(var_ptr + chans, mask=cmask, other=1.0).to(tl.float32) + eps)
    scale = weight * inv_std
    shift = tl.load(b_ptr + chans, mask=cmask, other=0.0).to(tl.float32) - mean * scale
    return scale, shift, mean, inv_std


@triton.jit
def _frozen_bn_forward_kernel(x_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, scale_ptr, w2_ptr, b2_ptr,
                              mean2_ptr, var2_ptr, res_ptr, sample_ptr, outer_ptr, out_ptr,
                              channels, width, pixels, eps, eps2, sample_gain,
                              sx_b, sx_c, sx_h, sx_w, sr_b, sr_c, sr_h, sr_w,
                              su_b, su_c, su_h, su_w, so_b, so_c, so_h, so_w,
                              RELU: tl.constexpr, SCALE: tl.constexpr, SECOND: tl.constexpr,
                              RESIDUAL: tl.constexpr, SAMPLE: tl.constexpr,
                              OUTER: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_P: tl.constexpr):
    batch = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    idx = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = chans < channels
    mask = cmask[:, None] & (idx < pixels)[None, :]
    r, c = idx // width, idx % width
    x = tl.load(x_ptr + batch * sx_b + chans[:, None] * sx_c + (r * sx_h + c * sx_w)[None, :],
                mask=mask, other=0.0).to(tl.float32)
    s1, t1, _, _ = _affine(w_ptr, b_ptr, mean_ptr, var_ptr, chans, cmask, eps)
    y = x * s1[:, None] + t1[:, None]
    if RELU:
        y = tl.maximum(y, 0.0)
    if SCALE:
        y = y * tl.load(scale_ptr + chans, mask=cmask, other=0.0).to(tl.float32)[:, None]
    if SECOND:
        s2, t2, _, _ = _affine(w2_ptr, b2_ptr, mean2_ptr, var2_ptr, chans, cmask, eps2)
        y = y * s2[:, None] + t2[:, None]
    if RESIDUAL:
        y += tl.load(res_ptr + batch * sr_b + chans[:, None] * sr_c
                     + (r * sr_h + c * sr_w)[None, :], mask=mask, other=0.0).to(tl.float32)
    if SAMPLE:  # the image's drop-path factor
        y = y * (tl.load(sample_ptr + batch).to(tl.float32) * sample_gain)
    if OUTER:
        y += tl.load(outer_ptr + batch * su_b + chans[:, None] * su_c
                     + (r * su_h + c * su_w)[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + batch * so_b + chans[:, None] * so_c + (r * so_h + c * so_w)[None, :], y,
             mask=mask)


@triton.jit
def _store_sums(direct_ptr, row_ptr, column, chans, cmask, tile_sums, DIRECT: tl.constexpr):
    """A block of channels' sums: into their gradients (``DIRECT``) or into ``column`` of the
    program's row of partial sums."""
    if DIRECT:
        tl.store(direct_ptr + chans, tile_sums, mask=cmask)
    else:
        tl.store(row_ptr + column + chans, tile_sums, mask=cmask)


@triton.jit
def _frozen_bn_backward_kernel(grad_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, scale_ptr,
                               w2_ptr, b2_ptr, mean2_ptr, var2_ptr, sample_ptr, dx_ptr, dw_ptr,
                               db_ptr, dscale_ptr, dw2_ptr, db2_ptr, dres_ptr, sums_ptr,
                               channels, batch_size, width, pixels, eps, eps2, sample_gain,
                               sg_b, sg_c, sg_h, sg_w, sx_b, sx_c, sx_h, sx_w,
                               sd_b, sd_c, sd_h, sd_w, sr_b, sr_c, sr_h, sr_w,
                               RELU: tl.constexpr, SCALE: tl.constexpr, SECOND: tl.constexpr,
                               SAMPLE: tl.constexpr, RESIDUAL_GRAD: tl.constexpr,
                               DIRECT: tl.constexpr, COLUMNS: tl.constexpr,
                               BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program ``(cb, s)`` of ``(C / BLOCK_C, S)``: channel block ``cb``'s pixel blocks ``s``,
    ``s + S``, ... of every image, tile by tile. Its sums go to the gradients (``DIRECT``: one
    program per channel block) or to row ``s`` of ``sums`` (S, COLUMNS * C): dweight, dbias,
    [dscale], [dweight2, dbias2], each ``C`` columns. With a drop-path factor per image, the
    residual's gradient (the incoming one times it) is written too (``RESIDUAL_GRAD``)."""
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chans < channels
    s1, _, mean1, inv1 = _affine(w_ptr, b_ptr, mean_ptr, var_ptr, chans, cmask, eps)
    w1 = tl.load(w_ptr + chans, mask=cmask, other=0.0).to(tl.float32)[:, None]
    b1 = tl.load(b_ptr + chans, mask=cmask, other=0.0).to(tl.float32)[:, None]
    scale = tl.full([BLOCK_C], 1.0, tl.float32)
    if SCALE:
        scale = tl.load(scale_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.full([BLOCK_C], 1.0, tl.float32)
    mean2 = tl.full([BLOCK_C], 0.0, tl.float32)
    inv2 = tl.full([BLOCK_C], 1.0, tl.float32)
    if SECOND:
        s2, _, mean2, inv2 = _affine(w2_ptr, b2_ptr, mean2_ptr, var2_ptr, chans, cmask, eps2)
    sum_w = tl.full([BLOCK_C], 0.0, tl.float32)
    sum_b = tl.full([BLOCK_C], 0.0, tl.float32)
    sum_scale = tl.full([BLOCK_C], 0.0, tl.float32)
    sum_w2 = tl.full([BLOCK_C], 0.0, tl.float32)
    sum_b2 = tl.full([BLOCK_C], 0.0, tl.float32)
    blocks = (pixels + BLOCK_P - 1) // BLOCK_P
    for item in range(tl.program_id(1), batch_size * blocks, tl.num_programs(1)):
        batch = (item // blocks).to(tl.int64)
        idx = (item % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = cmask[:, None] & (idx < pixels)[None, :]
        r, c = idx // width, idx % width
        x = tl.load(x_ptr + batch * sx_b + chans[:, None] * sx_c + (r * sx_h + c * sx_w)[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + batch * sg_b + chans[:, None] * sg_c
                    + (r * sg_h + c * sg_w)[None, :], mask=mask, other=0.0).to(tl.float32)
        if SAMPLE:
            g = g * (tl.load(sample_ptr + batch).to(tl.float32) * sample_gain)
        if RESIDUAL_GRAD:
            tl.store(dres_ptr + batch * sr_b + chans[:, None] * sr_c
                     + (r * sr_h + c * sr_w)[None, :], g, mask=mask)
        x_hat = (x - mean1[:, None]) * inv1[:, None]
        pre = x_hat * w1 + b1  # BN1(x)
        act = pre
        if RELU:
            act = tl.maximum(pre, 0.0)
        if SECOND:
            sum_w2 += sum_along(g * ((act * scale[:, None] - mean2[:, None]) * inv2[:, None]), 1)
            sum_b2 += sum_along(g, 1)
            g = g * s2[:, None]
        if SCALE:
            sum_scale += sum_along(g * act, 1)
            g = g * scale[:, None]
        if RELU:
            g = tl.where(pre > 0.0, g, 0.0)
        sum_w += sum_along(g * x_hat, 1)
        sum_b += sum_along(g, 1)
        tl.store(dx_ptr + batch * sd_b + chans[:, None] * sd_c + (r * sd_h + c * sd_w)[None, :],
                 g * s1[:, None], mask=mask)
    row = sums_ptr + tl.program_id(1).to(tl.int64) * (COLUMNS * channels)
    _store_sums(dw_ptr, row, 0, chans, cmask, sum_w, DIRECT)
    _store_sums(db_ptr, row, channels, chans, cmask, sum_b, DIRECT)
    if SCALE:
        _store_sums(dscale_ptr, row, 2 * channels, chans, cmask, sum_scale, DIRECT)
    if SECOND:
        _store_sums(dw2_ptr, row, (COLUMNS - 2) * channels, chans, cmask, sum_w2, DIRECT)
        _store_sums(db2_ptr, row, (COLUMNS - 1) * channels, chans, cmask, sum_b2, DIRECT)


def _tile(channels: int, pixels: int) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: a program's channels and pixels per step (powers of two, about
    :data:`_TILE` values)."""
    block_p = min(triton.next_power_of_2(max(pixels, 1)), _PIXELS)
    return max(1, min(triton.next_power_of_2(channels), _TILE // block_p)), block_p


def _new_map(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, device=like.device, dtype=like.dtype,
                       memory_format=memory_format_of(like))


def _second(second: Optional[Sequence], like: torch.Tensor) -> Tuple[tuple, float]:
    """The second BatchNorm's four tensors (or ``like`` four times: unused pointers), eps."""
    if second is None:
        return (like,) * 4, 1.0
    return tuple(second[:4]), float(second[4])


def frozen_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                  relu: bool = False, scale: Optional[torch.Tensor] = None,
                  second: Optional[Sequence] = None, residual: Optional[torch.Tensor] = None,
                  sample_scale: Optional[torch.Tensor] = None, sample_gain: float = 1.0,
                  outer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[outer +] sample_scale * ([residual +] BN2(scale * act(BN1(x))))`` in ``x``'s dtype
    and memory format: see :func:`mmmobilemamba.ops.frozen_bn.frozen_bn_act`. One kernel."""
    b, c, h, w = x.shape
    block_c, block_p = _tile(c, h * w)
    out = _new_map(x)
    (w2, b2, mean2, var2), eps2 = _second(second, weight)
    res = residual if residual is not None else x
    outer_ = outer if outer is not None else x
    _frozen_bn_forward_kernel[(b, triton.cdiv(c, block_c), triton.cdiv(h * w, block_p))](
        x, weight, bias, running_mean, running_var, scale if scale is not None else weight,
        w2, b2, mean2, var2, res, sample_scale if sample_scale is not None else weight, outer_,
        out, c, w, h * w, eps, eps2, sample_gain, *x.stride(), *res.stride(), *outer_.stride(),
        *out.stride(), RELU=relu, SCALE=scale is not None, SECOND=second is not None,
        RESIDUAL=residual is not None, SAMPLE=sample_scale is not None,
        OUTER=outer is not None, BLOCK_C=block_c, BLOCK_P=block_p)
    return out


def frozen_bn_act_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor, running_mean: torch.Tensor,
                           running_var: torch.Tensor, eps: float, relu: bool = False,
                           scale: Optional[torch.Tensor] = None,
                           second: Optional[Sequence] = None, residual_grad: bool = False,
                           sample_scale: Optional[torch.Tensor] = None,
                           sample_gain: float = 1.0) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`frozen_bn_act`: of ``x`` (its dtype and memory format), the
    weight, the bias, the scale, the second BatchNorm's weight and bias (theirs; empty
    float32 where absent) and, with ``residual_grad`` and drop-path factors, the residual's
    (in ``x``'s dtype and memory format; else empty: the incoming gradient is the
    residual's and the outer map's). One kernel; with more than
    :data:`~.triton_common.PER_PROGRAM` values per block of channels, one reduction
    more."""
    b, c, h, w = x.shape
    dx = _new_map(x)
    dw, db = torch.empty_like(weight), torch.empty_like(bias)

    def empty():
        return torch.empty(0, device=x.device, dtype=torch.float32)

    dscale = torch.empty_like(scale) if scale is not None else empty()
    (w2, b2, mean2, var2), eps2 = _second(second, weight)
    dw2, db2 = (torch.empty_like(w2), torch.empty_like(b2)) if second is not None \
        else (empty(), empty())
    residual_grad = residual_grad and sample_scale is not None
    dres = _new_map(x) if residual_grad else empty()
    block_c, block_p = _tile(c, h * w)
    splits = shares(block_c * b * h * w)
    outputs = [dw, db] + ([dscale] if scale is not None else []) + \
        ([dw2, db2] if second is not None else [])
    sums = torch.empty((splits, len(outputs) * c) if splits > 1 else (0,), device=x.device,
                       dtype=torch.float32)
    res_strides = dres.stride() if residual_grad else (0, 0, 0, 0)
    _frozen_bn_backward_kernel[(triton.cdiv(c, block_c), splits)](
        grad, x, weight, bias, running_mean, running_var,
        scale if scale is not None else weight, w2, b2, mean2, var2,
        sample_scale if sample_scale is not None else weight, dx, dw, db,
        dscale if scale is not None else dw, dw2 if second is not None else dw,
        db2 if second is not None else dw, dres if residual_grad else dx, sums, c, b, w, h * w,
        eps, eps2, sample_gain, *grad.stride(), *x.stride(), *dx.stride(), *res_strides,
        RELU=relu, SCALE=scale is not None, SECOND=second is not None,
        SAMPLE=sample_scale is not None, RESIDUAL_GRAD=residual_grad, DIRECT=splits == 1,
        COLUMNS=len(outputs), BLOCK_C=block_c, BLOCK_P=block_p)
    if splits > 1:
        column_sums(sums, outputs)
    return dx, dw, db, dscale, dw2, db2, dres


# ------------------------------------------------------------------ folded into a conv
@triton.jit
def _fold_args(weight_ptr, w_ptr, mean_ptr, var_ptr, channels, per_channel, eps,
               BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    taps = tl.arange(0, BLOCK_K)
    cmask = chans < channels
    mask = cmask[:, None] & (taps < per_channel)[None, :]
    at = chans.to(tl.int64)[:, None] * per_channel + taps[None, :]
    weight = tl.load(weight_ptr + at, mask=mask, other=0.0).to(tl.float32)
    inv_std = 1.0 / tl.sqrt(tl.load(var_ptr + chans, mask=cmask, other=1.0).to(tl.float32) + eps)
    scale = tl.load(w_ptr + chans, mask=cmask, other=0.0).to(tl.float32) * inv_std
    mean = tl.load(mean_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    return chans, taps, cmask, mask, at, weight, inv_std, scale, mean


@triton.jit
def _fold_forward_kernel(weight_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, out_w_ptr, out_b_ptr,
                         channels, per_channel, centre, eps, IDENTITY: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    chans, taps, cmask, mask, at, weight, _, scale, mean = _fold_args(
        weight_ptr, w_ptr, mean_ptr, var_ptr, channels, per_channel, eps, BLOCK_C, BLOCK_K)
    folded = weight * scale[:, None]
    if IDENTITY:  # x + conv(x): one more at the kernel's centre tap
        folded += tl.where((taps == centre)[None, :], 1.0, 0.0)
    tl.store(out_w_ptr + at, folded, mask=mask)
    bias = tl.load(b_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_b_ptr + chans, bias - mean * scale, mask=cmask)


@triton.jit
def _fold_backward_kernel(grad_w_ptr, grad_b_ptr, weight_ptr, w_ptr, mean_ptr, var_ptr,
                          dweight_ptr, dw_ptr, db_ptr, channels, per_channel, eps, sgb,
                          BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    chans, _, cmask, mask, at, weight, inv_std, scale, mean = _fold_args(
        weight_ptr, w_ptr, mean_ptr, var_ptr, channels, per_channel, eps, BLOCK_C, BLOCK_K)
    grad_w = tl.load(grad_w_ptr + at, mask=mask, other=0.0).to(tl.float32)
    grad_b = tl.load(grad_b_ptr + chans * sgb, mask=cmask, other=0.0).to(tl.float32)
    tl.store(dweight_ptr + at, grad_w * scale[:, None], mask=mask)
    grad_scale = sum_along(grad_w * weight, 1) - mean * grad_b
    tl.store(dw_ptr + chans, grad_scale * inv_std, mask=cmask)
    tl.store(db_ptr + chans, grad_b, mask=cmask)


def _fold_launch(weight: torch.Tensor):
    channels, per_channel = weight.shape[0], weight[0].numel()
    block_k = triton.next_power_of_2(per_channel)
    block_c = max(1, min(triton.next_power_of_2(channels), _TILE // block_k))
    return channels, per_channel, (triton.cdiv(channels, block_c),), dict(BLOCK_C=block_c,
                                                                          BLOCK_K=block_k)


def fold_frozen_bn(weight: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
                   running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                   identity: bool = False,
                   dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias with the frozen BatchNorm after it folded in (and the
    identity, for ``x + BN(conv(x))``): see :func:`mmmobilemamba.ops.frozen_bn.fold_frozen_bn`.
    One kernel."""
    weight = weight.contiguous()  # a parameter: contiguous already
    channels, per_channel, grid, meta = _fold_launch(weight)
    folded = torch.empty_like(weight, dtype=dtype or weight.dtype)
    bias = torch.empty_like(bn_bias, dtype=dtype or bn_bias.dtype)
    centre = (per_channel - 1) // 2
    _fold_forward_kernel[grid](weight, bn_weight, bn_bias, running_mean, running_var, folded,
                               bias, channels, per_channel, centre, eps, IDENTITY=identity,
                               **meta)
    return folded, bias


def fold_frozen_bn_backward(grad_weight: torch.Tensor, grad_bias: torch.Tensor,
                            weight: torch.Tensor, bn_weight: torch.Tensor,
                            running_mean: torch.Tensor, running_var: torch.Tensor,
                            eps: float) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`fold_frozen_bn`'s weight, BatchNorm weight and bias (each in
    its input's dtype). One kernel."""
    weight = weight.contiguous()
    grad_weight = grad_weight.contiguous()  # a conv's weight gradient: contiguous already
    channels, per_channel, grid, meta = _fold_launch(weight)
    dweight, dw, db = (torch.empty_like(weight), torch.empty_like(bn_weight),
                       torch.empty_like(bn_weight))
    _fold_backward_kernel[grid](grad_weight, grad_bias, weight, bn_weight, running_mean,
                                running_var, dweight, dw, db, channels, per_channel, eps,
                                grad_bias.stride(0), **meta)
    return dweight, dw, db
