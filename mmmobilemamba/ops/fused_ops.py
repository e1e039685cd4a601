"""WTE-Mamba's and SS2D's fused layers as custom ops (``torch.library``), differentiable, each
with its PyTorch twin: Triton kernels (:mod:`.triton_fused`) on CUDA, the twin anywhere else.

* ``mmmobilemamba::haar_inverse_add``: ``base * s + IWT(bands * t)`` for Haar filters, what
  WTE-Mamba adds to its scaled SS2D output (the wavelet pair's inverse and both learned scales,
  without a grouped transposed conv); backward ``haar_inverse_add_backward``.
* ``mmmobilemamba::gated_layer_norm``: SS2D's ``LayerNorm(y) * silu(z)`` from the scan's
  token-major output to the NCHW map its output projection reads; backward
  ``gated_layer_norm_backward``.

Each call is one op (one kernel on CUDA) forwards and one backwards, in eager mode and as a
node of a compiled graph.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .op_backends import triton_kernels

__all__ = ['haar_inverse_add', 'gated_layer_norm', 'haar_inverse_add_torch',
           'haar_inverse_add_backward_torch', 'gated_layer_norm_torch',
           'gated_layer_norm_backward_torch']


def _channel_view(t: Tensor) -> Tensor:
    return t.float().view(1, -1, 1, 1)


# ------------------------------------------------------------------ Haar inverse + add
def haar_inverse_add_torch(bands: Tensor, base: Tensor, taps: Tensor,
                           band_scale: Optional[Tensor] = None,
                           base_scale: Optional[Tensor] = None) -> Tensor:
    """Twin of the Triton kernel: ``base * base_scale + IWT(bands * band_scale)``, cropped to
    ``base``'s size, NCHW-contiguous in ``base``'s dtype.

    Args:
        bands (Tensor): sub-bands (B, 4C, h, w), the four of a channel consecutive.
        base (Tensor): (B, C, H, W) with ``h = ceil(H / 2)``, ``w = ceil(W / 2)``.
        taps (Tensor): reconstruction filters whose first four are every channel's
            ``(4, 2, 2)`` taps: (4C, 1, 2, 2) or (4, 2, 2).
        band_scale (Tensor, optional): per sub-band channel scale (4C,); with ``base_scale``.
        base_scale (Tensor, optional): per channel scale of ``base`` (C,).
    """
    b, c, height, width = base.shape
    h, w = bands.shape[-2:]
    bands32, base32 = bands.float(), base.float()
    if band_scale is not None:
        bands32, base32 = bands32 * _channel_view(band_scale), base32 * _channel_view(base_scale)
    image = torch.einsum('bckhw,kpq->bchpwq', bands32.reshape(b, c, 4, h, w),
                         taps.reshape(-1, 2, 2)[:4].float()).reshape(b, c, 2 * h, 2 * w)
    return (base32 + image[..., :height, :width]).to(base.dtype).contiguous()


def haar_inverse_add_backward_torch(grad: Tensor, bands: Tensor, base: Tensor, taps: Tensor,
                                    band_scale: Optional[Tensor] = None,
                                    base_scale: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
    """Twin of the backward kernel: the gradients (float32) of bands, base, band_scale and
    base_scale (the last two empty without scales). The adjoint of the inverse transform is a
    stride-2 depthwise conv of the gradient with the same taps."""
    from .wavelet import pad_to_even
    channels = base.shape[1]
    grad32 = grad.float()
    weight = taps.reshape(-1, 2, 2)[:4].float().unsqueeze(1).repeat(channels, 1, 1, 1)
    wt = F.conv2d(pad_to_even(grad32), weight, stride=2, groups=channels)  # (B, 4C, h, w)
    if band_scale is None:
        empty = grad32.new_empty(0)
        return wt, grad32.clone(), empty, empty
    dband_scale = (wt * bands.float()).sum((0, 2, 3))
    dbase_scale = (grad32 * base.float()).sum((0, 2, 3))
    return (wt * _channel_view(band_scale), grad32 * _channel_view(base_scale), dband_scale,
            dbase_scale)


@torch.library.custom_op('mmmobilemamba::haar_inverse_add', mutates_args=())
def _haar_inverse_add(bands: Tensor, base: Tensor, taps: Tensor, band_scale: Optional[Tensor],
                      base_scale: Optional[Tensor], backend: str) -> Tensor:
    kernels = triton_kernels(backend, 'triton_fused')
    if kernels is not None:
        return kernels.haar_inverse_add(bands, base, taps, band_scale, base_scale)
    return haar_inverse_add_torch(bands, base, taps, band_scale, base_scale)


@_haar_inverse_add.register_fake
def _(bands, base, taps, band_scale, base_scale, backend):
    return torch.empty_like(base, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmmobilemamba::haar_inverse_add_backward', mutates_args=())
def _haar_inverse_add_backward(grad: Tensor, bands: Tensor, base: Tensor, taps: Tensor,
                               band_scale: Optional[Tensor], base_scale: Optional[Tensor],
                               backend: str) -> List[Tensor]:
    kernels = triton_kernels(backend, 'triton_fused')
    impl = haar_inverse_add_backward_torch if kernels is None \
        else kernels.haar_inverse_add_backward
    grads = impl(grad, bands, base, taps, band_scale, base_scale)
    # each in its input's dtype (autograd's rule; the scales are float32 parameters)
    return [g.to(dtype) for g, dtype in zip(grads, (bands.dtype, base.dtype, torch.float32,
                                                     torch.float32))]


@_haar_inverse_add_backward.register_fake
def _(grad, bands, base, taps, band_scale, base_scale, backend):
    scaled = band_scale is not None
    f32 = dict(device=base.device, dtype=torch.float32)
    return [torch.empty_like(bands, memory_format=torch.contiguous_format),
            torch.empty_like(base, memory_format=torch.contiguous_format),
            torch.empty(bands.shape[1] if scaled else 0, **f32),
            torch.empty(base.shape[1] if scaled else 0, **f32)]


def _haar_setup(ctx, inputs, output):
    bands, base, taps, band_scale, base_scale, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(bands, base, taps, band_scale, base_scale)


def _haar_backward(ctx, grad):
    bands, base, taps, band_scale, base_scale = ctx.saved_tensors
    dbands, dbase, dband_scale, dbase_scale = _haar_inverse_add_backward(
        grad, bands, base, taps, band_scale, base_scale, ctx.backend)
    scaled = band_scale is not None
    return (dbands, dbase, None, dband_scale.to(band_scale.dtype) if scaled else None,
            dbase_scale.to(base_scale.dtype) if scaled else None, None)


_haar_inverse_add.register_autograd(_haar_backward, setup_context=_haar_setup)


def haar_inverse_add(bands: Tensor, base: Tensor, taps: Tensor,
                     band_scale: Optional[Tensor] = None, base_scale: Optional[Tensor] = None,
                     backend: str = 'torch') -> Tensor:
    """``base * base_scale + IWT(bands * band_scale)`` (Haar), NCHW-contiguous in ``base``'s
    dtype, differentiable: one op. See :func:`haar_inverse_add_torch` for the arguments;
    ``backend`` 'torch' (the twin) or 'triton' (CUDA)."""
    if (band_scale is None) != (base_scale is None):
        raise ValueError('haar_inverse_add: give both scales or neither')
    return _haar_inverse_add(bands, base, taps, band_scale, base_scale, backend)


# ------------------------------------------------------------------ gated LayerNorm
def gated_layer_norm_torch(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor,
                           eps: float) -> Tensor:
    """Twin of the Triton kernel: ``LayerNorm(y) * silu(z)`` as an NCHW-contiguous map in
    ``z``'s dtype.

    Args:
        y (Tensor): token-major (B, L, D) with ``L = H * W``.
        z (Tensor): the gate's input (B, D, H, W).
        weight (Tensor): LayerNorm weight (D,).
        bias (Tensor): LayerNorm bias (D,).
        eps (float): LayerNorm epsilon.
    """
    b, d, h, w = z.shape
    normed = F.layer_norm(y.float(), (d,), weight.float(), bias.float(), eps)
    normed = normed.view(b, h, w, d).permute(0, 3, 1, 2)
    return (normed * F.silu(z.float())).to(z.dtype).contiguous()


def gated_layer_norm_backward_torch(grad: Tensor, y: Tensor, z: Tensor, weight: Tensor,
                                    bias: Tensor, eps: float) -> Tuple[Tensor, ...]:
    """Twin of the backward kernel: the gradients (float32) of y (token-major), z (NCHW),
    weight and bias."""
    b, d, h, w = z.shape
    y32 = y.float().reshape(b, h * w, d)
    mean = y32.mean(-1, keepdim=True)
    rstd = torch.rsqrt(y32.var(-1, unbiased=False, keepdim=True) + eps)
    normed = (y32 - mean) * rstd                                      # (B, L, D)
    z_t = z.float().flatten(2).transpose(1, 2)                        # (B, L, D)
    grad_t = grad.float().flatten(2).transpose(1, 2)
    sig = torch.sigmoid(z_t)
    affine = normed * weight.float() + bias.float()
    dz = grad_t * affine * sig * (1 + z_t * (1 - sig))
    d_affine = grad_t * z_t * sig
    d_normed = d_affine * weight.float()
    dy = (d_normed - d_normed.mean(-1, keepdim=True)
          - normed * (d_normed * normed).mean(-1, keepdim=True)) * rstd
    return (dy.contiguous(), dz.transpose(1, 2).reshape(b, d, h, w).contiguous(),
            (d_affine * normed).sum((0, 1)), d_affine.sum((0, 1)))


@torch.library.custom_op('mmmobilemamba::gated_layer_norm', mutates_args=())
def _gated_layer_norm(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float,
                      backend: str) -> Tensor:
    kernels = triton_kernels(backend, 'triton_fused')
    if kernels is not None:
        return kernels.gated_layer_norm(y, z, weight, bias, eps)
    return gated_layer_norm_torch(y, z, weight, bias, eps)


@_gated_layer_norm.register_fake
def _(y, z, weight, bias, eps, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmmobilemamba::gated_layer_norm_backward', mutates_args=())
def _gated_layer_norm_backward(grad: Tensor, y: Tensor, z: Tensor, weight: Tensor, bias: Tensor,
                               eps: float, backend: str) -> List[Tensor]:
    kernels = triton_kernels(backend, 'triton_fused')
    impl = gated_layer_norm_backward_torch if kernels is None \
        else kernels.gated_layer_norm_backward
    grads = impl(grad, y, z, weight, bias, eps)
    # each in its input's dtype (autograd's rule; bfloat16 for z under autocast)
    return [g.to(t.dtype) for g, t in zip(grads, (y, z, weight, bias))]


@_gated_layer_norm_backward.register_fake
def _(grad, y, z, weight, bias, eps, backend):
    b, d, h, w = z.shape
    return [y.new_empty(b, h * w, d), z.new_empty(b, d, h, w), torch.empty_like(weight),
            torch.empty_like(bias)]


def _gated_setup(ctx, inputs, output):
    y, z, weight, bias, eps, backend = inputs
    ctx.eps, ctx.backend = eps, backend
    ctx.save_for_backward(y, z, weight, bias)


def _gated_backward(ctx, grad):
    y, z, weight, bias = ctx.saved_tensors
    dy, dz, dw, db = _gated_layer_norm_backward(grad, y, z, weight, bias, ctx.eps, ctx.backend)
    return dy.view(y.shape), dz, dw, db, None, None


_gated_layer_norm.register_autograd(_gated_backward, setup_context=_gated_setup)


def gated_layer_norm(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float,
                     backend: str = 'torch') -> Tensor:
    """``LayerNorm(y) * silu(z)`` as NCHW in ``z``'s dtype, differentiable: one op. See
    :func:`gated_layer_norm_torch` for the arguments; ``backend`` 'torch' (the twin) or
    'triton' (CUDA)."""
    return _gated_layer_norm(y, z, weight, bias, eps, backend)
