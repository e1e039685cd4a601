"""Triton kernels of the CUDA deploy form's fused layers (twins in :mod:`.fused_ops`).

* :func:`haar_inverse_add`: ``base + IWT(bands)`` for two-tap (Haar) filters, one pass: each
  output pixel reads its four sub-band values, no transposed convolution, no shuffles.
* :func:`gated_layer_norm`: LayerNorm over the channels of token-major ``y``, times
  ``silu(z)``, written channel-major (NCHW) for the convolution after it: the norm, the gate
  and the layout change in one kernel.

Registers nothing (:mod:`.fused_ops` makes the custom ops), so that tests may reload it under
``TRITON_INTERPRET=1``.
"""
import torch
import triton
import triton.language as tl

__all__ = ['haar_inverse_add', 'gated_layer_norm']


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    # tl.sum is a @jit function of triton.language: not callable in an interpreter enabled
    # after Triton's import (the tests'); tl.reduce is a builtin
    return tl.reduce(x, axis, _add)


@triton.jit
def _haar_inverse_add_kernel(bands_ptr, base_ptr, taps_ptr, out_ptr, total, channels, height,
                             width, band_h, band_w, sb_b, sb_c, sb_h, sb_w, sx_b, sx_c, sx_h,
                             sx_w, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    col = idx % width
    rest = idx // width
    row = rest % height
    rest = rest // height
    chan = rest % channels
    batch = rest // channels
    pr, pc = row % 2, col % 2  # position in the 2x2 block
    acc = tl.load(base_ptr + batch * sx_b + chan * sx_c + row * sx_h + col * sx_w, mask=mask,
                  other=0.0).to(tl.float32)
    at = batch * sb_b + (4 * chan) * sb_c + (row // 2) * sb_h + (col // 2) * sb_w
    for k in tl.static_range(4):
        tap = tl.load(taps_ptr + k * 4 + pr * 2 + pc, mask=mask, other=0.0)
        acc += tap * tl.load(bands_ptr + at + k * sb_c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + idx, acc, mask=mask)


def haar_inverse_add(bands: torch.Tensor, base: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``base + IWT(bands)`` cropped to ``base``'s size: see
    :func:`mmmobilemamba.ops.fused_ops.haar_inverse_add`."""
    b, c, h, w = base.shape
    out = torch.empty((b, c, h, w), device=base.device, dtype=base.dtype)
    total = out.numel()
    block = 256
    _haar_inverse_add_kernel[(triton.cdiv(total, block),)](
        bands, base, taps.float().contiguous(), out, total, c, h, w, bands.shape[2],
        bands.shape[3], *bands.stride(), *base.stride(), BLOCK=block)
    return out


@triton.jit
def _gated_layer_norm_kernel(y_ptr, z_ptr, w_ptr, b_ptr, out_ptr, length, channels, eps,
                             sz_b, sz_c, sz_t, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    batch = tl.program_id(0)
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    chans = tl.arange(0, BLOCK_C)
    tmask = tokens < length
    cmask = chans < channels
    mask = tmask[:, None] & cmask[None, :]
    y = tl.load(y_ptr + (batch * length + tokens)[:, None] * channels + chans[None, :],
                mask=mask, other=0.0).to(tl.float32)
    mean = _sum(y, 1) / channels
    centred = tl.where(mask, y - mean[:, None], 0.0)
    var = _sum(centred * centred, 1) / channels
    normed = centred / tl.sqrt(var + eps)[:, None]
    weight = tl.load(w_ptr + chans, mask=cmask, other=0.0)
    shift = tl.load(b_ptr + chans, mask=cmask, other=0.0)
    normed = normed * weight[None, :] + shift[None, :]
    z = tl.load(z_ptr + batch * sz_b + chans[None, :] * sz_c + tokens[:, None] * sz_t, mask=mask,
                other=0.0).to(tl.float32)
    gated = normed * (z / (1.0 + tl.exp(-z)))
    out_at = (batch * channels + chans[None, :]) * length + tokens[:, None]
    tl.store(out_ptr + out_at, gated, mask=mask)


def gated_layer_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """``LayerNorm(y) * silu(z)`` as NCHW: see :func:`mmmobilemamba.ops.fused_ops.gated_layer_norm`."""
    b, c, h, w = z.shape
    length = h * w
    out = torch.empty((b, c, h, w), device=z.device, dtype=z.dtype)
    block_c = triton.next_power_of_2(c)
    block_t = max(1, min(32, 8192 // block_c))
    zs = z.stride()
    if zs[2] != w * zs[3]:
        z = z.contiguous()
        zs = z.stride()
    _gated_layer_norm_kernel[(b, triton.cdiv(length, block_t))](
        y.contiguous(), z, weight.float().contiguous(), bias.float().contiguous(), out, length,
        c, eps, zs[0], zs[1], zs[3], BLOCK_T=block_t, BLOCK_C=block_c)
    return out
