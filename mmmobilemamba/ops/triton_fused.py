"""Triton kernels of WTE-Mamba's and SS2D's fused layers (twins in :mod:`.fused_ops`).

* ``haar_inverse_add``: ``base * s + IWT(bands * t)`` for two-tap (Haar) filters, one pass:
  each output pixel reads its four sub-band values (no transposed convolution, no shuffle);
  its backward is one pass too (the sub-band gradients are the 2x2 blocks of the gradient
  times the taps, and the scales' gradients are summed per channel).
* ``gated_layer_norm``: LayerNorm over the channels of token-major ``y`` times ``silu(z)``,
  written channel-major (NCHW) for the convolution after it: the norm, the gate and the layout
  change in one kernel, and one for the backward.

Registers nothing (:mod:`.fused_ops` makes the custom ops), so that tests may reload it under
``TRITON_INTERPRET=1``.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_common import sum_along

__all__ = ['haar_inverse_add', 'haar_inverse_add_backward', 'gated_layer_norm',
           'gated_layer_norm_backward']

_BLOCK = 256


# ------------------------------------------------------------------ Haar inverse + add
@triton.jit
def _haar_forward_kernel(bands_ptr, base_ptr, taps_ptr, band_scale_ptr, base_scale_ptr, out_ptr,
                         channels, height, width, sb_b, sb_c, sb_h, sb_w, sx_b, sx_c, sx_h, sx_w,
                         SCALED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # (batch, channel)
    batch, chan = row // channels, row % channels
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < height * width
    r, c = idx // width, idx % width
    pos = (r % 2) * 2 + c % 2  # position in the 2x2 block
    acc = tl.load(base_ptr + batch * sx_b + chan * sx_c + r * sx_h + c * sx_w, mask=mask,
                  other=0.0).to(tl.float32)
    if SCALED:
        acc = acc * tl.load(base_scale_ptr + chan)
    at = batch * sb_b + (4 * chan) * sb_c + (r // 2) * sb_h + (c // 2) * sb_w
    for k in tl.static_range(4):
        band = tl.load(bands_ptr + at + k * sb_c, mask=mask, other=0.0).to(tl.float32)
        if SCALED:
            band = band * tl.load(band_scale_ptr + 4 * chan + k)
        acc += tl.load(taps_ptr + k * 4 + pos, mask=mask, other=0.0) * band
    tl.store(out_ptr + row * height * width + idx, acc, mask=mask)


@triton.jit
def _haar_block_grad(grad_ptr, base_ptr, dbase_ptr, row, batch, chan, i, j, mask, height, width,
                     base_scale, sx_b, sx_c, sx_h, sx_w, P: tl.constexpr,
                     SCALED: tl.constexpr):
    """Gradient at position ``P`` of each 2x2 block: read it, write the base's gradient, and
    return it with its product with the base (for the base scale's gradient)."""
    r, c = 2 * i + P // 2, 2 * j + P % 2
    inside = mask & (r < height) & (c < width)
    g = tl.load(grad_ptr + (row * height + r) * width + c, mask=inside, other=0.0).to(tl.float32)
    tl.store(dbase_ptr + (row * height + r) * width + c, g * base_scale, mask=inside)
    gb = g * 0.0
    if SCALED:
        gb = g * tl.load(base_ptr + batch * sx_b + chan * sx_c + r * sx_h + c * sx_w,
                         mask=inside, other=0.0).to(tl.float32)
    return g, gb


@triton.jit
def _haar_backward_kernel(grad_ptr, bands_ptr, base_ptr, taps_ptr, band_scale_ptr,
                          base_scale_ptr, dbands_ptr, dbase_ptr, dband_scale_ptr,
                          dbase_scale_ptr, channels, height, width, band_h, band_w,
                          sb_b, sb_c, sb_h, sb_w, sx_b, sx_c, sx_h, sx_w,
                          SCALED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # (batch, channel)
    batch, chan = row // channels, row % channels
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # sub-band pixels
    mask = idx < band_h * band_w
    i, j = idx // band_w, idx % band_w
    base_scale = 1.0
    if SCALED:
        base_scale = tl.load(base_scale_ptr + chan)
    g0, gb0 = _haar_block_grad(grad_ptr, base_ptr, dbase_ptr, row, batch, chan, i, j, mask,
                               height, width, base_scale, sx_b, sx_c, sx_h, sx_w, 0, SCALED)
    g1, gb1 = _haar_block_grad(grad_ptr, base_ptr, dbase_ptr, row, batch, chan, i, j, mask,
                               height, width, base_scale, sx_b, sx_c, sx_h, sx_w, 1, SCALED)
    g2, gb2 = _haar_block_grad(grad_ptr, base_ptr, dbase_ptr, row, batch, chan, i, j, mask,
                               height, width, base_scale, sx_b, sx_c, sx_h, sx_w, 2, SCALED)
    g3, gb3 = _haar_block_grad(grad_ptr, base_ptr, dbase_ptr, row, batch, chan, i, j, mask,
                               height, width, base_scale, sx_b, sx_c, sx_h, sx_w, 3, SCALED)
    if SCALED:
        tl.atomic_add(dbase_scale_ptr + chan, sum_along(gb0 + gb1 + gb2 + gb3, 0))
    at = batch * sb_b + (4 * chan) * sb_c + i * sb_h + j * sb_w
    for k in tl.static_range(4):
        wt = (tl.load(taps_ptr + k * 4) * g0 + tl.load(taps_ptr + k * 4 + 1) * g1
              + tl.load(taps_ptr + k * 4 + 2) * g2 + tl.load(taps_ptr + k * 4 + 3) * g3)
        out_at = ((batch * channels + chan) * 4 + k) * band_h * band_w + idx
        if SCALED:
            band = tl.load(bands_ptr + at + k * sb_c, mask=mask, other=0.0).to(tl.float32)
            tl.atomic_add(dband_scale_ptr + 4 * chan + k, sum_along(wt * band, 0))
            wt = wt * tl.load(band_scale_ptr + 4 * chan + k)
        tl.store(dbands_ptr + out_at, wt, mask=mask)


def _haar_args(bands, base, taps, band_scale, base_scale):
    b, c, h, w = base.shape
    scaled = band_scale is not None
    f32 = taps.float().contiguous()
    scales = (band_scale.float().contiguous(), base_scale.float().contiguous()) if scaled \
        else (f32, f32)  # unused pointers
    return (b, c, h, w), f32, scales, scaled


def haar_inverse_add(bands: torch.Tensor, base: torch.Tensor, taps: torch.Tensor,
                     band_scale: Optional[torch.Tensor] = None,
                     base_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``base * s + IWT(bands * t)`` cropped to ``base``'s size, NCHW-contiguous in ``base``'s
    dtype: see :func:`mmmobilemamba.ops.fused_ops.haar_inverse_add`."""
    (b, c, h, w), taps32, scales, scaled = _haar_args(bands, base, taps, band_scale, base_scale)
    out = torch.empty((b, c, h, w), device=base.device, dtype=base.dtype)
    _haar_forward_kernel[(b * c, triton.cdiv(h * w, _BLOCK))](
        bands, base, taps32, *scales, out, c, h, w, *bands.stride(), *base.stride(),
        SCALED=scaled, BLOCK=_BLOCK)
    return out


def haar_inverse_add_backward(grad: torch.Tensor, bands: torch.Tensor, base: torch.Tensor,
                              taps: torch.Tensor, band_scale: Optional[torch.Tensor] = None,
                              base_scale: Optional[torch.Tensor] = None
                              ) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`haar_inverse_add` (float32): bands, base, and the two scales'
    (empty without scales)."""
    (b, c, h, w), taps32, scales, scaled = _haar_args(bands, base, taps, band_scale, base_scale)
    band_h, band_w = bands.shape[-2:]
    f32 = dict(device=base.device, dtype=torch.float32)
    dbands = torch.empty((b, 4 * c, band_h, band_w), **f32)
    dbase = torch.empty((b, c, h, w), **f32)
    dband_scale = torch.zeros(4 * c if scaled else 0, **f32)
    dbase_scale = torch.zeros(c if scaled else 0, **f32)
    _haar_backward_kernel[(b * c, triton.cdiv(band_h * band_w, _BLOCK))](
        grad.contiguous(), bands, base, taps32, *scales, dbands, dbase, dband_scale,
        dbase_scale, c, h, w, band_h, band_w, *bands.stride(), *base.stride(), SCALED=scaled,
        BLOCK=_BLOCK)
    return dbands, dbase, dband_scale, dbase_scale


# ------------------------------------------------------------------ gated LayerNorm
@triton.jit
def _normalise(y_ptr, batch, tokens, chans, mask, length, channels, eps):
    y = tl.load(y_ptr + (batch * length + tokens)[:, None] * channels + chans[None, :],
                mask=mask, other=0.0).to(tl.float32)
    mean = sum_along(y, 1) / channels
    centred = tl.where(mask, y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(sum_along(centred * centred, 1) / channels + eps)
    return centred * rstd[:, None], rstd


@triton.jit
def _gate_inputs(y_ptr, z_ptr, w_ptr, b_ptr, length, channels, eps, sz_b, sz_c, sz_t,
                 BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """A program's tokens: the normalised ``y``, its ``rstd``, the affine ``LN(y)`` and the gate's
    input ``z``, (BLOCK_T, BLOCK_C) in float32; the mask and the NCHW offsets."""
    batch = tl.program_id(0)
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    chans = tl.arange(0, BLOCK_C)
    cmask = chans < channels
    mask = (tokens < length)[:, None] & cmask[None, :]
    normed, rstd = _normalise(y_ptr, batch, tokens, chans, mask, length, channels, eps)
    weight = tl.load(w_ptr + chans, mask=cmask, other=0.0)
    affine = normed * weight[None, :] + tl.load(b_ptr + chans, mask=cmask, other=0.0)[None, :]
    z = tl.load(z_ptr + batch * sz_b + chans[None, :] * sz_c + tokens[:, None] * sz_t, mask=mask,
                other=0.0).to(tl.float32)
    nchw = (batch * channels + chans[None, :]) * length + tokens[:, None]
    return normed, rstd, weight, affine, z, mask, cmask, nchw, batch, tokens, chans


@triton.jit
def _gated_ln_forward_kernel(y_ptr, z_ptr, w_ptr, b_ptr, out_ptr, length, channels, eps,
                             sz_b, sz_c, sz_t, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    _, _, _, affine, z, mask, _, nchw, _, _, _ = _gate_inputs(
        y_ptr, z_ptr, w_ptr, b_ptr, length, channels, eps, sz_b, sz_c, sz_t, BLOCK_T, BLOCK_C)
    e = tl.exp(-tl.abs(z))  # silu(z) = z sigmoid(z), a sigmoid that cannot overflow
    tl.store(out_ptr + nchw, affine * z * tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)),
             mask=mask)


@triton.jit
def _gated_ln_backward_kernel(grad_ptr, y_ptr, z_ptr, w_ptr, b_ptr, dy_ptr, dz_ptr, dw_ptr,
                              db_ptr, length, channels, eps, sz_b, sz_c, sz_t,
                              BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    normed, rstd, weight, affine, z, mask, cmask, nchw, batch, tokens, chans = _gate_inputs(
        y_ptr, z_ptr, w_ptr, b_ptr, length, channels, eps, sz_b, sz_c, sz_t, BLOCK_T, BLOCK_C)
    grad = tl.load(grad_ptr + nchw, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(z))  # a sigmoid that cannot overflow
    sig = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(dz_ptr + nchw, grad * affine * sig * (1.0 + z * (1.0 - sig)), mask=mask)
    d_affine = grad * z * sig
    tl.atomic_add(dw_ptr + chans, sum_along(d_affine * normed, 0), mask=cmask)
    tl.atomic_add(db_ptr + chans, sum_along(d_affine, 0), mask=cmask)
    d_normed = d_affine * weight[None, :]
    dy = (d_normed - (sum_along(d_normed, 1) / channels)[:, None]
          - normed * (sum_along(d_normed * normed, 1) / channels)[:, None]) * rstd[:, None]
    tl.store(dy_ptr + (batch * length + tokens)[:, None] * channels + chans[None, :], dy,
             mask=mask)


def _gated_ln_args(y, z):
    b, c, h, w = z.shape
    length = h * w
    block_c = triton.next_power_of_2(c)
    block_t = max(1, min(32, 4096 // block_c))
    if z.stride(2) != w * z.stride(3):  # the kernel reads z as (B, C, L)
        z = z.contiguous()
    return (b, c, length), z, block_t, block_c


def gated_layer_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """``LayerNorm(y) * silu(z)`` as NCHW: see
    :func:`mmmobilemamba.ops.fused_ops.gated_layer_norm`."""
    (b, c, length), z, block_t, block_c = _gated_ln_args(y, z)
    out = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    _gated_ln_forward_kernel[(b, triton.cdiv(length, block_t))](
        y.contiguous(), z, weight.float().contiguous(), bias.float().contiguous(), out, length,
        c, eps, z.stride(0), z.stride(1), z.stride(3), BLOCK_T=block_t, BLOCK_C=block_c)
    return out


def gated_layer_norm_backward(grad: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                              weight: torch.Tensor, bias: torch.Tensor,
                              eps: float) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`gated_layer_norm` (float32): y (token-major), z (NCHW), weight,
    bias."""
    (b, c, length), z, block_t, block_c = _gated_ln_args(y, z)
    f32 = dict(device=z.device, dtype=torch.float32)
    dy = torch.empty((b, length, c), **f32)
    dz = torch.empty(z.shape, **f32)
    dw, db = torch.zeros(c, **f32), torch.zeros(c, **f32)
    _gated_ln_backward_kernel[(b, triton.cdiv(length, block_t))](
        grad.contiguous(), y.contiguous(), z, weight.float().contiguous(),
        bias.float().contiguous(), dy, dz, dw, db, length, c, eps, z.stride(0), z.stride(1),
        z.stride(3), BLOCK_T=block_t, BLOCK_C=block_c)
    return dy, dz, dw, db
