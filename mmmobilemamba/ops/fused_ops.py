"""Fused layers of the CUDA deploy form as custom ops (``torch.library``), each with its PyTorch
twin: Triton kernels (:mod:`.triton_fused`) on CUDA, the twin anywhere else.

* ``mmmobilemamba::haar_inverse_add``: ``base + IWT(bands)`` for Haar filters, what WTE-Mamba
  adds to its SS2D output (the wavelet pair's inverse without a grouped transposed conv).
* ``mmmobilemamba::gated_layer_norm``: SS2D's ``LayerNorm(y) * silu(z)`` from the scan's
  token-major output to the NCHW map its output projection reads.

``haar_inverse_add`` is differentiable (the model trains through it: the adjoint of the
inverse transform is a stride-2 depthwise conv with the same taps); ``gated_layer_norm`` is an
inference op (the deploy form it serves is for evaluation).
"""
import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['haar_inverse_add', 'gated_layer_norm', 'haar_inverse_add_torch',
           'gated_layer_norm_torch']

_BACKENDS = ('torch', 'triton')


def _triton_fused():
    return importlib.import_module('mmmobilemamba.ops.triton_fused')


def _check(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f'fused op: backend must be one of {_BACKENDS}, got {backend!r}')


def haar_inverse_add_torch(bands: Tensor, base: Tensor, taps: Tensor) -> Tensor:
    """Twin of the Triton kernel: ``base + IWT(bands)``, cropped to ``base``'s size.

    Args:
        bands (Tensor): sub-bands (B, 4C, h, w), the four of a channel consecutive.
        base (Tensor): (B, C, H, W) with ``h = ceil(H / 2)``, ``w = ceil(W / 2)``.
        taps (Tensor): the reconstruction taps (4, 2, 2), the same for every channel.
    """
    b, c, height, width = base.shape
    h, w = bands.shape[-2:]
    image = torch.einsum('bckhw,kpq->bchpwq', bands.reshape(b, c, 4, h, w),
                         taps.to(bands.dtype)).reshape(b, c, 2 * h, 2 * w)
    return (base + image[..., :height, :width]).contiguous()


@torch.library.custom_op('mmmobilemamba::haar_inverse_add', mutates_args=())
def haar_inverse_add(bands: Tensor, base: Tensor, taps: Tensor, backend: str) -> Tensor:
    """``base + IWT(bands)`` (Haar), NCHW-contiguous, in ``base``'s dtype; see
    :func:`haar_inverse_add_torch` for the arguments."""
    _check(backend)
    if backend == 'triton':
        return _triton_fused().haar_inverse_add(bands, base, taps)
    return haar_inverse_add_torch(bands, base, taps).to(base.dtype)


@haar_inverse_add.register_fake
def _(bands, base, taps, backend):
    return torch.empty_like(base, memory_format=torch.contiguous_format)


def _haar_setup(ctx, inputs, output):
    bands, base, taps, _ = inputs
    ctx.save_for_backward(taps)
    ctx.bands_dtype = bands.dtype


def _haar_backward(ctx, grad):
    # IWT^T: each band is the 2x2 blocks of the gradient times its taps (a stride-2 depthwise
    # conv with four outputs per channel), on the gradient padded to even sizes
    from .wavelet import pad_to_even
    taps, = ctx.saved_tensors
    channels = grad.shape[1]
    weight = taps.to(grad.dtype).unsqueeze(1).repeat(channels, 1, 1, 1)  # (4C, 1, 2, 2)
    grad_bands = F.conv2d(pad_to_even(grad), weight, stride=2, groups=channels)
    return grad_bands.to(ctx.bands_dtype), grad, None, None


haar_inverse_add.register_autograd(_haar_backward, setup_context=_haar_setup)


def gated_layer_norm_torch(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor,
                           eps: float) -> Tensor:
    """Twin of the Triton kernel: ``LayerNorm(y) * silu(z)`` as an NCHW-contiguous map.

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


@torch.library.custom_op('mmmobilemamba::gated_layer_norm', mutates_args=())
def gated_layer_norm(y: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float,
                     backend: str) -> Tensor:
    """``LayerNorm(y) * silu(z)`` as NCHW in ``z``'s dtype; see :func:`gated_layer_norm_torch`."""
    _check(backend)
    if backend == 'triton':
        return _triton_fused().gated_layer_norm(y, z, weight, bias, eps)
    return gated_layer_norm_torch(y, z, weight, bias, eps)


@gated_layer_norm.register_fake
def _(y, z, weight, bias, eps, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)
