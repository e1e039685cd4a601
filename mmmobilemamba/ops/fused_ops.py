"""WTE-Mamba's and SS2D's fused layers as custom ops (``torch.library``), differentiable, each
with its PyTorch twin: Triton kernels (:mod:`.triton_fused`) on CUDA, the twin anywhere else.

* ``mmmobilemamba::haar_inverse_add``: ``base * s + IWT(bands * t)`` for Haar filters, what
  WTE-Mamba adds to its scaled SS2D output (the wavelet pair's inverse and both learned scales,
  without a grouped transposed conv); backward ``haar_inverse_add_backward``.
* ``mmmobilemamba::gated_layer_norm``: SS2D's ``LayerNorm(y) * silu(z)`` from the scan's
  token-major output (summed over the scan's directions when given per direction) to the map
  its output projection reads; backward ``gated_layer_norm_backward``.

Each call is one op (one kernel on CUDA, or a kernel and a small reduction for a backward
with parameters) forwards and one backwards, in eager mode and as a node of a compiled graph.
Maps come out in the memory format of the map they follow (``base``, ``z``; gradients in
their inputs'), as the fakes say; every result in the dtype its input has.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .memory_format import memory_format_of
from .op_backends import triton_kernels

__all__ = ['haar_inverse_add', 'gated_layer_norm', 'haar_inverse_add_torch',
           'haar_inverse_add_backward_torch', 'gated_layer_norm_torch',
           'gated_layer_norm_backward_torch']


def _channel_view(t: Tensor) -> Tensor:
    return t.float().view(1, -1, 1, 1)


def _map_like(shape, like: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty ``(B, C, H, W)`` map in ``like``'s memory format: what the ops return."""
    return torch.empty(shape, device=like.device, dtype=dtype,
                       memory_format=memory_format_of(like))


def _as_format_of(t: Tensor, like: Tensor) -> Tensor:
    return t.contiguous(memory_format=memory_format_of(like))


# ------------------------------------------------------------------ Haar inverse + add
def haar_inverse_add_torch(bands: Tensor, base: Tensor, taps: Tensor,
                           band_scale: Optional[Tensor] = None,
                           base_scale: Optional[Tensor] = None) -> Tensor:
    """Twin of the Triton kernel: ``base * base_scale + IWT(bands * band_scale)``, cropped to
    ``base``'s size, in ``base``'s dtype and memory format.

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
    return _as_format_of((base32 + image[..., :height, :width]).to(base.dtype), base)


def haar_inverse_add_backward_torch(grad: Tensor, bands: Tensor, base: Tensor, taps: Tensor,
                                    band_scale: Optional[Tensor] = None,
                                    base_scale: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
    """Twin of the backward kernel: the gradients (float32) of bands and base (in their memory
    formats), band_scale and base_scale (empty without scales). The adjoint of the inverse
    transform is a stride-2 depthwise conv of the gradient with the same taps."""
    from .wavelet import pad_to_even
    channels = base.shape[1]
    grad32 = grad.float()
    weight = taps.reshape(-1, 2, 2)[:4].float().unsqueeze(1).repeat(channels, 1, 1, 1)
    wt = F.conv2d(pad_to_even(grad32), weight, stride=2, groups=channels)  # (B, 4C, h, w)
    if band_scale is None:
        empty = grad32.new_empty(0)
        return (_as_format_of(wt, bands), _as_format_of(grad32, base).clone(), empty,
                empty.clone())
    dband_scale = (wt * bands.float()).sum((0, 2, 3))
    dbase_scale = (grad32 * base.float()).sum((0, 2, 3))
    return (_as_format_of(wt * _channel_view(band_scale), bands),
            _as_format_of(grad32 * _channel_view(base_scale), base), dband_scale, dbase_scale)


@torch.library.custom_op('mmmobilemamba::haar_inverse_add', mutates_args=())
def _haar_inverse_add(bands: Tensor, base: Tensor, taps: Tensor, band_scale: Optional[Tensor],
                      base_scale: Optional[Tensor], backend: str) -> Tensor:
    kernels = triton_kernels(backend, 'triton_fused')
    if kernels is not None:
        return kernels.haar_inverse_add(bands, base, taps, band_scale, base_scale)
    return haar_inverse_add_torch(bands, base, taps, band_scale, base_scale)


@_haar_inverse_add.register_fake
def _(bands, base, taps, band_scale, base_scale, backend):
    return _map_like(base.shape, base, base.dtype)


@torch.library.custom_op('mmmobilemamba::haar_inverse_add_backward', mutates_args=())
def _haar_inverse_add_backward(grad: Tensor, bands: Tensor, base: Tensor, taps: Tensor,
                               band_scale: Optional[Tensor], base_scale: Optional[Tensor],
                               backend: str) -> List[Tensor]:
    """The gradients of bands, base (in their dtypes and memory formats), band_scale and
    base_scale (in theirs; empty float32 without scales)."""
    kernels = triton_kernels(backend, 'triton_fused')
    impl = haar_inverse_add_backward_torch if kernels is None \
        else kernels.haar_inverse_add_backward
    grads = impl(grad, bands, base, taps, band_scale, base_scale)
    dtypes = (bands.dtype, base.dtype) + ((band_scale.dtype, base_scale.dtype)
                                          if band_scale is not None else (torch.float32,) * 2)
    # each in its input's dtype (autograd's rule): a no-op after the kernel, which writes so
    return [g.to(dtype) for g, dtype in zip(grads, dtypes)]


@_haar_inverse_add_backward.register_fake
def _(grad, bands, base, taps, band_scale, base_scale, backend):
    scales = (torch.empty_like(band_scale, memory_format=torch.contiguous_format),
              torch.empty_like(base_scale, memory_format=torch.contiguous_format)) \
        if band_scale is not None else tuple(
            torch.empty(0, device=base.device, dtype=torch.float32) for _ in range(2))
    return [_map_like(bands.shape, bands, bands.dtype), _map_like(base.shape, base, base.dtype),
            *scales]


def _haar_setup(ctx, inputs, output):
    bands, base, taps, band_scale, base_scale, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(bands, base, taps, band_scale, base_scale)


def _haar_backward(ctx, grad):
    bands, base, taps, band_scale, base_scale = ctx.saved_tensors
    dbands, dbase, dband_scale, dbase_scale = _haar_inverse_add_backward(
        grad, bands, base, taps, band_scale, base_scale, ctx.backend)
    scaled = band_scale is not None
    return (dbands, dbase, None, dband_scale if scaled else None,
            dbase_scale if scaled else None, None)


_haar_inverse_add.register_autograd(_haar_backward, setup_context=_haar_setup)


def haar_inverse_add(bands: Tensor, base: Tensor, taps: Tensor,
                     band_scale: Optional[Tensor] = None, base_scale: Optional[Tensor] = None,
                     backend: str = 'torch') -> Tensor:
    """``base * base_scale + IWT(bands * band_scale)`` (Haar) in ``base``'s dtype and memory
    format, differentiable: one op. See :func:`haar_inverse_add_torch` for the arguments;
    ``backend`` 'torch' (the twin) or 'triton' (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if (band_scale is None) != (base_scale is None):
        raise ValueError('haar_inverse_add: give both scales or neither')
    b, c, height, width = base.shape
    expected = (b, 4 * c, (height + 1) // 2, (width + 1) // 2)
    if tuple(bands.shape) != expected:
        raise ValueError(f'haar_inverse_add: bands must be (B, 4C, ceil(H/2), ceil(W/2)) = '
                         f'{expected} for base {tuple(base.shape)}, got {tuple(bands.shape)}')
    if taps.numel() < 16:
        raise ValueError(f'haar_inverse_add: taps must hold the four 2x2 Haar filters '
                         f'((4C, 1, 2, 2) or (4, 2, 2)), got {tuple(taps.shape)}')
    return _haar_inverse_add(bands, base, taps, band_scale, base_scale, backend)


# ------------------------------------------------------------------ gated LayerNorm
def _summed_directions(y: Tensor) -> Tensor:
    """``y`` in float32, summed over its directions when given per direction."""
    return y.float().sum(1) if y.dim() == 4 else y.float()


def gated_layer_norm_torch(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor,
                           eps: float) -> Tensor:
    """Twin of the Triton kernel: ``LayerNorm(y) * silu(z)`` as a map in ``z``'s dtype and
    memory format.

    Args:
        y (Tensor): token-major (B, L, D) with ``L = H * W``, or per scan direction
            (B, K, L, D): normalised is the sum over K.
        z (Tensor): the gate's input (B, D, H, W).
        weight (Tensor): LayerNorm weight (D,).
        bias (Tensor): LayerNorm bias (D,).
        eps (float): LayerNorm epsilon.
    """
    b, d, h, w = z.shape
    normed = F.layer_norm(_summed_directions(y), (d,), weight.float(), bias.float(), eps)
    normed = normed.view(b, h, w, d).permute(0, 3, 1, 2)
    return _as_format_of((normed * F.silu(z.float())).to(z.dtype), z)


def gated_layer_norm_backward_torch(grad: Tensor, y: Tensor, z: Tensor, weight: Tensor,
                                    bias: Tensor, eps: float) -> Tuple[Tensor, ...]:
    """Twin of the backward kernel: the gradients (float32) of y (token-major (B, L, D): the
    gradient of each direction when ``y`` is per direction), z (in its memory format),
    weight and bias."""
    b, d, h, w = z.shape
    y32 = _summed_directions(y).reshape(b, h * w, d)
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
    return (dy.contiguous(), _as_format_of(dz.transpose(1, 2).reshape(b, d, h, w), z),
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
    return _map_like(z.shape, z, z.dtype)


@torch.library.custom_op('mmmobilemamba::gated_layer_norm_backward', mutates_args=())
def _gated_layer_norm_backward(grad: Tensor, y: Tensor, z: Tensor, weight: Tensor, bias: Tensor,
                               eps: float, backend: str) -> List[Tensor]:
    """The gradients of y (once, (B, L, D), whether ``y`` is per direction or not), z, weight
    and bias, each in its input's dtype; z's in its memory format."""
    kernels = triton_kernels(backend, 'triton_fused')
    impl = gated_layer_norm_backward_torch if kernels is None \
        else kernels.gated_layer_norm_backward
    grads = impl(grad, y, z, weight, bias, eps)
    # each in its input's dtype (autograd's rule; bfloat16 for z under autocast): a no-op
    # after the kernel, which writes so
    return [g.to(t.dtype) for g, t in zip(grads, (y, z, weight, bias))]


@_gated_layer_norm_backward.register_fake
def _(grad, y, z, weight, bias, eps, backend):
    b, d, h, w = z.shape
    return [y.new_empty(b, h * w, d), _map_like(z.shape, z, z.dtype),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(bias, memory_format=torch.contiguous_format)]


def _gated_setup(ctx, inputs, output):
    y, z, weight, bias, eps, backend = inputs
    ctx.eps, ctx.backend = eps, backend
    ctx.save_for_backward(y, z, weight, bias)


def _gated_backward(ctx, grad):
    y, z, weight, bias = ctx.saved_tensors
    dy, dz, dw, db = _gated_layer_norm_backward(grad, y, z, weight, bias, ctx.eps, ctx.backend)
    if y.dim() == 4:  # per direction: every direction's gradient is the sum's, one view
        dy = dy.unsqueeze(1).expand(y.shape)
    return dy, dz, dw, db, None, None


_gated_layer_norm.register_autograd(_gated_backward, setup_context=_gated_setup)


def gated_layer_norm(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float,
                     backend: str = 'torch') -> Tensor:
    """``LayerNorm(y) * silu(z)`` as a map in ``z``'s dtype and memory format, differentiable:
    one op. ``y`` is the scan's token-major output (B, L, D), or its directions (B, K, L, D),
    summed as they are read (the gradient of each direction is the gradient of the sum: one
    (B, L, D) tensor handed back expanded over K). See :func:`gated_layer_norm_torch` for the
    arguments; ``backend`` 'torch' (the twin) or 'triton' (CUDA, or CPU under
    ``TRITON_INTERPRET=1``)."""
    b, d, h, w = z.shape
    tokens = (b, h * w, d)
    if y.dim() not in (3, 4) or (y.shape[0], *y.shape[-2:]) != tokens:
        raise ValueError(f'gated_layer_norm: y must be (B, L, D) = {tokens} or (B, K, L, D) '
                         f'for z {tuple(z.shape)} (L = H * W), got {tuple(y.shape)}')
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f'gated_layer_norm: weight and bias must be ({d},), got '
                         f'{tuple(weight.shape)} and {tuple(bias.shape)}')
    return _gated_layer_norm(y, z, weight, bias, eps, backend)
