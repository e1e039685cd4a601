"""Triton kernels of WTE-Mamba's and SS2D's fused layers (twins in :mod:`.fused_ops`).

* ``haar_inverse_add``: ``base * s + IWT(bands * t)`` for two-tap (Haar) filters, one pass:
  each output pixel reads its four sub-band values (no transposed convolution, no shuffle);
  its backward is one pass too (the sub-band gradients are the 2x2 blocks of the gradient
  times the taps), its programs owning blocks of channels and summing the scales' gradients
  as they go.
* ``gated_layer_norm``: LayerNorm over the channels of token-major ``y`` (summed over the scan
  directions as it is read when given per direction) times ``silu(z)``, written as a map for
  the convolution after it: the sum, the norm, the gate and the layout change in one kernel;
  the backward is one kernel and one small reduction (the weight's and bias's gradients).

Every tensor is read where it is (any strides: no ``contiguous`` copies) and every result is
written in the dtype the op returns (no casts after the kernels); maps are written in the
memory format of the map they follow (:func:`~.memory_format.memory_format_of`). Sums over
the batch (the scales', the LayerNorm weight's and bias's gradients) are summed by the
programs that own a block of channels, or written as partial sums that a second kernel adds up
(:func:`~.triton_common.column_sums`): no zero fills, no atomics, the same result every run.

Registers nothing (:mod:`.fused_ops` makes the custom ops), so that tests may reload it under
``TRITON_INTERPRET=1``.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .memory_format import memory_format_of
from .triton_common import column_sums, shares, sum_along

__all__ = ['haar_inverse_add', 'haar_inverse_add_backward', 'gated_layer_norm',
           'gated_layer_norm_backward']

_TILE = 1024  # values per program of the map kernels (channels x pixels)
_PIXELS = 256  # at most this many pixels of a channel per program
_LN_VALUES = 4096  # values (tokens x channels) per step of the LayerNorm kernels
_LN_PROGRAMS = 1024  # programs of the LayerNorm backward: each loops over token blocks


def _map_tile(channels: int, pixels: int) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: a program's channels and pixels (powers of two)."""
    block_p = min(triton.next_power_of_2(max(pixels, 1)), _PIXELS)
    return max(1, min(triton.next_power_of_2(channels), _TILE // block_p)), block_p


def _new_map(shape, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty ``(B, C, H, W)`` map in ``like``'s memory format (what the fakes return)."""
    return torch.empty(shape, device=like.device, dtype=dtype, memory_format=memory_format_of(like))


# ------------------------------------------------------------------ Haar inverse + add
@triton.jit
def _map_block(channels, pixels, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's image (64-bit: offsets may pass 2^31), channels, pixels and masks."""
    batch = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    idx = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = chans < channels
    return batch, chans, idx, cmask, cmask[:, None] & (idx < pixels)[None, :]


@triton.jit
def _haar_forward_kernel(bands_ptr, base_ptr, taps_ptr, band_scale_ptr, base_scale_ptr, out_ptr,
                         channels, height, width, sb_b, sb_c, sb_h, sb_w, sx_b, sx_c, sx_h, sx_w,
                         so_b, so_c, so_h, so_w, SCALED: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_P: tl.constexpr):
    batch, chans, idx, cmask, mask = _map_block(channels, height * width, BLOCK_C, BLOCK_P)
    r, c = idx // width, idx % width
    pos = (r % 2) * 2 + c % 2  # position in the 2x2 block
    acc = tl.load(base_ptr + batch * sx_b + chans[:, None] * sx_c + (r * sx_h + c * sx_w)[None, :],
                  mask=mask, other=0.0).to(tl.float32)
    if SCALED:
        scale = tl.load(base_scale_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
        acc = acc * scale[:, None]
    at = batch * sb_b + (4 * chans)[:, None] * sb_c + ((r // 2) * sb_h + (c // 2) * sb_w)[None, :]
    for k in tl.static_range(4):
        band = tl.load(bands_ptr + at + k * sb_c, mask=mask, other=0.0).to(tl.float32)
        if SCALED:
            scale = tl.load(band_scale_ptr + 4 * chans + k, mask=cmask, other=0.0)
            band = band * scale.to(tl.float32)[:, None]
        acc += tl.load(taps_ptr + k * 4 + pos).to(tl.float32)[None, :] * band
    tl.store(out_ptr + batch * so_b + chans[:, None] * so_c + (r * so_h + c * so_w)[None, :], acc,
             mask=mask)


@triton.jit
def _haar_backward_kernel(grad_ptr, bands_ptr, base_ptr, taps_ptr, band_scale_ptr,
                          base_scale_ptr, dbands_ptr, dbase_ptr, dband_scale_ptr,
                          dbase_scale_ptr, sums_ptr, channels, batch_size, height, width, band_w,
                          sg_b, sg_c, sg_h, sg_w, sb_b, sb_c, sb_h, sb_w, sx_b, sx_c, sx_h, sx_w,
                          sdb_b, sdb_c, sdb_h, sdb_w, sdx_b, sdx_c, sdx_h, sdx_w,
                          SCALED: tl.constexpr, DIRECT: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    """Program ``(cb, s)`` of ``(C / BLOCK_C, S)``: channel block ``cb``'s sub-band pixel
    blocks ``s``, ``s + S``, ... of every image. The four gradient values of each 2x2 block
    give the base's gradient there and, times the taps, the four sub-bands' gradients. With
    scales, the channels' sums (the scales' gradients) are written to the gradients
    (``DIRECT``: one program per channel block) or to row ``s`` of ``sums`` (S, 5C): band
    ``k`` of channel ``c`` at column ``4c + k``, the base at ``4C + c``."""
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chans < channels
    band_h = (height + 1) // 2
    pixels = band_h * band_w
    blocks = (pixels + BLOCK_P - 1) // BLOCK_P
    base_scale = tl.full([BLOCK_C], 1.0, tl.float32)
    if SCALED:
        base_scale = tl.load(base_scale_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    sum_base = tl.full([BLOCK_C], 0.0, tl.float32)
    sum0 = tl.full([BLOCK_C], 0.0, tl.float32)
    sum1 = tl.full([BLOCK_C], 0.0, tl.float32)
    sum2 = tl.full([BLOCK_C], 0.0, tl.float32)
    sum3 = tl.full([BLOCK_C], 0.0, tl.float32)
    for item in range(tl.program_id(1), batch_size * blocks, tl.num_programs(1)):
        batch = (item // blocks).to(tl.int64)
        idx = (item % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = cmask[:, None] & (idx < pixels)[None, :]
        i, j = idx // band_w, idx % band_w
        wt0 = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
        wt1 = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
        wt2 = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
        wt3 = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
        for p in tl.static_range(4):  # the 2x2 block; pixels past an odd edge were cropped
            r, c = 2 * i + p // 2, 2 * j + p % 2
            inside = mask & ((r < height) & (c < width))[None, :]
            g = tl.load(grad_ptr + batch * sg_b + chans[:, None] * sg_c
                        + (r * sg_h + c * sg_w)[None, :], mask=inside, other=0.0).to(tl.float32)
            tl.store(dbase_ptr + batch * sdx_b + chans[:, None] * sdx_c
                     + (r * sdx_h + c * sdx_w)[None, :], g * base_scale[:, None], mask=inside)
            if SCALED:
                x = tl.load(base_ptr + batch * sx_b + chans[:, None] * sx_c
                            + (r * sx_h + c * sx_w)[None, :], mask=inside, other=0.0)
                sum_base += sum_along(g * x.to(tl.float32), 1)
            # band k's tap at position p
            wt0 += tl.load(taps_ptr + p).to(tl.float32) * g
            wt1 += tl.load(taps_ptr + 4 + p).to(tl.float32) * g
            wt2 += tl.load(taps_ptr + 8 + p).to(tl.float32) * g
            wt3 += tl.load(taps_ptr + 12 + p).to(tl.float32) * g
        at = batch * sb_b + (4 * chans)[:, None] * sb_c + (i * sb_h + j * sb_w)[None, :]
        out_at = batch * sdb_b + (4 * chans)[:, None] * sdb_c + (i * sdb_h + j * sdb_w)[None, :]
        for k in tl.static_range(4):
            if k == 0:
                wt = wt0
            elif k == 1:
                wt = wt1
            elif k == 2:
                wt = wt2
            else:
                wt = wt3
            if SCALED:
                band = tl.load(bands_ptr + at + k * sb_c, mask=mask, other=0.0).to(tl.float32)
                if k == 0:
                    sum0 += sum_along(wt * band, 1)
                elif k == 1:
                    sum1 += sum_along(wt * band, 1)
                elif k == 2:
                    sum2 += sum_along(wt * band, 1)
                else:
                    sum3 += sum_along(wt * band, 1)
                scale = tl.load(band_scale_ptr + 4 * chans + k, mask=cmask, other=0.0)
                wt = wt * scale.to(tl.float32)[:, None]
            tl.store(dbands_ptr + out_at + k * sdb_c, wt, mask=mask)
    if SCALED:
        if DIRECT:
            band_at, base_at = dband_scale_ptr + 4 * chans, dbase_scale_ptr + chans
        else:
            row = sums_ptr + tl.program_id(1).to(tl.int64) * (5 * channels)
            band_at, base_at = row + 4 * chans, row + 4 * channels + chans
        tl.store(base_at, sum_base, mask=cmask)
        tl.store(band_at, sum0, mask=cmask)
        tl.store(band_at + 1, sum1, mask=cmask)
        tl.store(band_at + 2, sum2, mask=cmask)
        tl.store(band_at + 3, sum3, mask=cmask)


def _haar_launch(base, pixels):
    """The grid and tile of a Haar kernel over ``pixels`` per channel."""
    b, c = base.shape[:2]
    block_c, block_p = _map_tile(c, pixels)
    return (b, triton.cdiv(c, block_c), triton.cdiv(pixels, block_p)), dict(
        BLOCK_C=block_c, BLOCK_P=block_p)


def haar_inverse_add(bands: torch.Tensor, base: torch.Tensor, taps: torch.Tensor,
                     band_scale: Optional[torch.Tensor] = None,
                     base_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``base * s + IWT(bands * t)`` cropped to ``base``'s size, in ``base``'s dtype and memory
    format: see :func:`mmmobilemamba.ops.fused_ops.haar_inverse_add`. One kernel."""
    _, c, h, w = base.shape
    scaled = band_scale is not None
    taps = taps.contiguous()  # the fixed filters: contiguous already, read in any dtype
    scales = (band_scale, base_scale) if scaled else (taps, taps)  # unused pointers
    out = _new_map(base.shape, base, base.dtype)
    grid, meta = _haar_launch(base, h * w)
    _haar_forward_kernel[grid](bands, base, taps, *scales, out, c, h, w, *bands.stride(),
                               *base.stride(), *out.stride(), SCALED=scaled, **meta)
    return out


def haar_inverse_add_backward(grad: torch.Tensor, bands: torch.Tensor, base: torch.Tensor,
                              taps: torch.Tensor, band_scale: Optional[torch.Tensor] = None,
                              base_scale: Optional[torch.Tensor] = None
                              ) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`haar_inverse_add`: bands' and base's (in their dtypes and
    memory formats), the two scales' (in theirs; empty without scales). One kernel; with
    scales and more than :data:`~.triton_common.PER_PROGRAM` values per block of channels,
    one reduction more."""
    b, c, h, w = base.shape
    band_h, band_w = bands.shape[-2:]
    scaled = band_scale is not None
    taps = taps.contiguous()
    dbands = _new_map(bands.shape, bands, bands.dtype)
    dbase = _new_map(base.shape, base, base.dtype)
    if scaled:
        dband_scale, dbase_scale = torch.empty_like(band_scale), torch.empty_like(base_scale)
    else:
        dband_scale, dbase_scale = (torch.empty(0, device=base.device, dtype=torch.float32)
                                    for _ in range(2))
    block_c, block_p = _map_tile(c, band_h * band_w)
    splits = shares(block_c * b * band_h * band_w)  # without scales: for parallelism only
    direct = splits == 1
    sums = torch.empty((0,) if direct or not scaled else (splits, 5 * c), device=base.device,
                       dtype=torch.float32)
    scales = (band_scale, base_scale) if scaled else (taps, taps)  # unused pointers
    _haar_backward_kernel[(triton.cdiv(c, block_c), splits)](
        grad, bands, base, taps, *scales, dbands, dbase, dband_scale, dbase_scale, sums, c, b,
        h, w, band_w, *grad.stride(), *bands.stride(), *base.stride(), *dbands.stride(),
        *dbase.stride(), SCALED=scaled, DIRECT=direct, BLOCK_C=block_c, BLOCK_P=block_p)
    if scaled and not direct:
        column_sums(sums, [dband_scale, dbase_scale])
    return dbands, dbase, dband_scale, dbase_scale


# ------------------------------------------------------------------ gated LayerNorm
@triton.jit
def _gate_inputs(y_ptr, z_ptr, w_ptr, b_ptr, batch, tokens, chans, length, width, channels,
                 directions, eps, sy_b, sy_k, sy_t, sy_c, sz_b, sz_c, sz_h, sz_w,
                 BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """A block of tokens: ``y`` summed over its directions and normalised, its ``rstd``, the
    affine ``LN(y)``, the gate's input ``z`` (BLOCK_T, BLOCK_C) in float32, the weight, the
    mask and each token's offset in a map (row, column)."""
    cmask = chans < channels
    mask = (tokens < length)[:, None] & cmask[None, :]
    at = batch * sy_b + tokens.to(tl.int64)[:, None] * sy_t + chans[None, :] * sy_c
    y = tl.full([BLOCK_T, BLOCK_C], 0.0, tl.float32)
    for k in range(0, directions):  # the scan's directions, summed as they are read
        y += tl.load(y_ptr + at + k * sy_k, mask=mask, other=0.0).to(tl.float32)
    mean = sum_along(y, 1) / channels
    centred = tl.where(mask, y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(sum_along(centred * centred, 1) / channels + eps)
    normed = centred * rstd[:, None]
    weight = tl.load(w_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + chans, mask=cmask, other=0.0).to(tl.float32)
    affine = normed * weight[None, :] + bias[None, :]
    row, col = tokens // width, tokens % width
    z = tl.load(z_ptr + batch * sz_b + chans[None, :] * sz_c + (row * sz_h + col * sz_w)[:, None],
                mask=mask, other=0.0).to(tl.float32)
    return normed, rstd, weight, affine, z, mask, cmask, row, col


@triton.jit
def _sigmoid(z):
    e = tl.exp(-tl.abs(z))  # a sigmoid that cannot overflow
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gated_ln_forward_kernel(y_ptr, z_ptr, w_ptr, b_ptr, out_ptr, length, width, channels,
                             directions, eps, sy_b, sy_k, sy_t, sy_c, sz_b, sz_c, sz_h, sz_w,
                             so_b, so_c, so_h, so_w, BLOCK_T: tl.constexpr,
                             BLOCK_C: tl.constexpr):
    batch = tl.program_id(0).to(tl.int64)
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    chans = tl.arange(0, BLOCK_C)
    _, _, _, affine, z, mask, _, row, col = _gate_inputs(
        y_ptr, z_ptr, w_ptr, b_ptr, batch, tokens, chans, length, width, channels, directions,
        eps, sy_b, sy_k, sy_t, sy_c, sz_b, sz_c, sz_h, sz_w, BLOCK_T, BLOCK_C)
    tl.store(out_ptr + batch * so_b + chans[None, :] * so_c + (row * so_h + col * so_w)[:, None],
             affine * z * _sigmoid(z), mask=mask)


@triton.jit
def _gated_ln_backward_kernel(grad_ptr, y_ptr, z_ptr, w_ptr, b_ptr, dy_ptr, dz_ptr, partial_ptr,
                              length, width, channels, directions, eps, sy_b, sy_k, sy_t, sy_c,
                              sz_b, sz_c, sz_h, sz_w, sg_b, sg_c, sg_h, sg_w,
                              sdz_b, sdz_c, sdz_h, sdz_w, BLOCK_T: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    """Each program walks token blocks ``program_id(1)``, ``+ num_programs(1)``, ... of one
    image; its partial sums of the weight's and bias's gradients go to its row of
    ``partial``."""
    batch = tl.program_id(0).to(tl.int64)
    chans = tl.arange(0, BLOCK_C)
    dw = tl.full([BLOCK_C], 0.0, tl.float32)
    db = tl.full([BLOCK_C], 0.0, tl.float32)
    blocks = (length + BLOCK_T - 1) // BLOCK_T
    for block in range(tl.program_id(1), blocks, tl.num_programs(1)):
        tokens = block * BLOCK_T + tl.arange(0, BLOCK_T)
        normed, rstd, weight, affine, z, mask, cmask, row, col = _gate_inputs(
            y_ptr, z_ptr, w_ptr, b_ptr, batch, tokens, chans, length, width, channels,
            directions, eps, sy_b, sy_k, sy_t, sy_c, sz_b, sz_c, sz_h, sz_w, BLOCK_T, BLOCK_C)
        grad = tl.load(grad_ptr + batch * sg_b + chans[None, :] * sg_c
                       + (row * sg_h + col * sg_w)[:, None], mask=mask, other=0.0)
        grad = grad.to(tl.float32)
        sig = _sigmoid(z)
        tl.store(dz_ptr + batch * sdz_b + chans[None, :] * sdz_c
                 + (row * sdz_h + col * sdz_w)[:, None],
                 grad * affine * sig * (1.0 + z * (1.0 - sig)), mask=mask)
        d_affine = grad * z * sig
        dw += sum_along(d_affine * normed, 0)
        db += sum_along(d_affine, 0)
        d_normed = d_affine * weight[None, :]
        dy = (d_normed - (sum_along(d_normed, 1) / channels)[:, None]
              - normed * (sum_along(d_normed * normed, 1) / channels)[:, None]) * rstd[:, None]
        tl.store(dy_ptr + (batch * length + tokens)[:, None] * channels + chans[None, :], dy,
                 mask=mask)
    row_at = (batch * tl.num_programs(1) + tl.program_id(1)) * (2 * channels)
    tl.store(partial_ptr + row_at + chans, dw, mask=chans < channels)
    tl.store(partial_ptr + row_at + channels + chans, db, mask=chans < channels)


def _gated_ln_args(y, z):
    """Sizes, y's strides as (batch, direction, token, channel) and the token block."""
    b, c, h, w = z.shape
    if y.dim() == 4:
        directions, y_strides = y.shape[1], y.stride()
    else:
        directions, y_strides = 1, (y.stride(0), 0, y.stride(1), y.stride(2))
    block_c = triton.next_power_of_2(c)
    block_t = max(1, min(32, _LN_VALUES // block_c))
    return (b, c, h * w, w, directions), y_strides, block_t, block_c


def gated_layer_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """``LayerNorm(y) * silu(z)`` as a map in ``z``'s dtype and memory format, ``y`` summed
    over its directions if given per direction: see
    :func:`mmmobilemamba.ops.fused_ops.gated_layer_norm`. One kernel."""
    (b, c, length, width, directions), y_strides, block_t, block_c = _gated_ln_args(y, z)
    out = _new_map(z.shape, z, z.dtype)
    _gated_ln_forward_kernel[(b, triton.cdiv(length, block_t))](
        y, z, weight, bias, out, length, width, c, directions, eps, *y_strides, *z.stride(),
        *out.stride(), BLOCK_T=block_t, BLOCK_C=block_c)
    return out


def gated_layer_norm_backward(grad: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                              weight: torch.Tensor, bias: torch.Tensor,
                              eps: float) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`gated_layer_norm`: of ``y`` as the sum over directions
    (B, L, D) in ``y``'s dtype, of ``z`` (its dtype and memory format), of the weight and the
    bias (theirs). One kernel and one reduction."""
    (b, c, length, width, directions), y_strides, block_t, block_c = _gated_ln_args(y, z)
    dy = torch.empty((b, length, c), device=z.device, dtype=y.dtype)
    dz = _new_map(z.shape, z, z.dtype)
    programs = max(1, min(triton.cdiv(length, block_t), _LN_PROGRAMS // b))
    partial = torch.empty((b * programs, 2 * c), device=z.device, dtype=torch.float32)
    _gated_ln_backward_kernel[(b, programs)](
        grad, y, z, weight, bias, dy, dz, partial, length, width, c, directions, eps, *y_strides,
        *z.stride(), *grad.stride(), *dz.stride(), BLOCK_T=block_t, BLOCK_C=block_c)
    dw, db = torch.empty_like(weight), torch.empty_like(bias)
    column_sums(partial, [dw, db])
    return dy, dz, dw, db
