"""One-level 2-D discrete wavelet transform as fixed-filter (transposed) convolutions.

``wavelet_transform`` maps ``(B, C, H, W) -> (B, C, 4, H/2, W/2)`` with the sub-bands in the
order LL, LH, HL, HH (a stride-2 grouped conv, four 2x2 filters per channel);
``inverse_wavelet_transform`` is its exact inverse (a grouped transposed conv with the
reconstruction filters). Odd ``H``/``W`` are zero-padded on the bottom/right before the
transform; :func:`inverse_wavelet_transform` takes the size to crop back to.

For two-tap (Haar) filters the transform only mixes the four pixels of each 2x2 block, so a
depthwise conv between the transform and its inverse, ``IWT(conv(WT(x)))``, is one grouped
conv on the 2x2 polyphase components of ``x`` (:func:`wavelet_domain_kernel`,
:func:`to_polyphase`, :func:`from_polyphase`): what a deployed model runs.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .memory_format import channels_innermost

__all__ = ['wavelet_filters', 'wavelet_transform', 'inverse_wavelet_transform',
           'wavelet_domain_kernel', 'to_polyphase', 'from_polyphase', 'pad_to_even', 'crop']


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """``x`` zero-padded on the bottom/right to an even height and width.

    Under ``torch.compile`` the pad is always taken (by 0 or 1): a branch on the parity of a
    symbolic size would be a guard, and each parity a recompilation.
    """
    h, w = x.shape[-2:]
    if torch.compiler.is_compiling() or h % 2 or w % 2:
        return F.pad(x, (0, w % 2, 0, h % 2))
    return x


def crop(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``x[..., :H, :W]`` with ``(H, W) = size`` (a view; under ``torch.compile`` always taken,
    without a guard on the sizes)."""
    if torch.compiler.is_compiling() or tuple(x.shape[-2:]) != tuple(size):
        return x[..., :size[0], :size[1]]
    return x


def _outer_bands(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The four separable 2-D filters (LL, LH, HL, HH) as (4, k, k); rows index height."""
    return torch.stack([
        lo[:, None] * lo[None, :],
        hi[:, None] * lo[None, :],
        lo[:, None] * hi[None, :],
        hi[:, None] * hi[None, :],
    ])


def wavelet_filters(channels: int, wavelet: str = 'db1',
                    dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decomposition and reconstruction filters for ``channels`` input channels.

    Args:
        channels (int): number of channels transformed independently.
        wavelet (str): a ``pywt`` wavelet name. MobileMamba uses 'db1' (Haar).
        dtype (torch.dtype): dtype of the returned filters.

    Returns:
        tuple[Tensor, Tensor]: ``(dec, rec)``, each ``(4 * channels, 1, k, k)``.
    """
    try:
        import pywt
    except ImportError as err:  # a declared dependency; say how to get it
        raise ImportError('wavelet filters need PyWavelets: pip install PyWavelets') from err
    w = pywt.Wavelet(wavelet)
    # conv2d correlates, so the decomposition filters are reversed to apply a convolution
    dec = _outer_bands(torch.tensor(w.dec_lo[::-1], dtype=torch.float64),
                       torch.tensor(w.dec_hi[::-1], dtype=torch.float64))
    rec = _outer_bands(torch.tensor(w.rec_lo, dtype=torch.float64),
                       torch.tensor(w.rec_hi, dtype=torch.float64))
    dec = dec.unsqueeze(1).repeat(channels, 1, 1, 1).to(dtype)
    rec = rec.unsqueeze(1).repeat(channels, 1, 1, 1).to(dtype)
    return dec, rec


def wavelet_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Forward transform ``(B, C, H, W) -> (B, C, 4, ceil(H/2), ceil(W/2))``.

    Two-tap filters (Haar) on a channels-last map take a fast path: the 2x2 blocks times a
    per-channel 4x4 matrix, one batched matrix product (a grouped stride-2 conv with 4C tiny
    filters is slow in the CPU conv backends). Otherwise (NCHW maps, as on CUDA, or longer
    filters) it is the grouped convolution, one input channel per group; both compute the same
    transform.

    Args:
        x (Tensor): input feature map.
        filters (Tensor): decomposition filters from :func:`wavelet_filters`, (4C, 1, k, k).
    """
    b, c, h, w = x.shape
    if filters.shape[0] != 4 * c:
        raise ValueError(f'wavelet_transform: filters are for {filters.shape[0] // 4} channels, '
                         f'input has {c}')
    x = pad_to_even(x)
    if filters.shape[-2:] == (2, 2) and channels_innermost(x):
        # each output pixel of each band is a 2x2 block of the input times that band's taps:
        # one batched (per channel) 4x4 matrix product over all blocks
        taps = filters.to(x.dtype).view(c, 4, 2, 2)
        h2, w2 = x.shape[2] // 2, x.shape[3] // 2
        # channels-last memory: stay in it, bands innermost, so that (B, 4C, h, w) is a view
        blocks = x.permute(0, 2, 3, 1).reshape(b, h2, 2, w2, 2, c)
        bands = torch.einsum('bhiwjc,ckij->bhwck', blocks, taps).contiguous()
        return bands.permute(0, 3, 4, 1, 2)
    # NCHW: the grouped stride-2 conv, four outputs per channel (one depthwise kernel on CUDA)
    pad = (filters.shape[2] // 2 - 1, filters.shape[3] // 2 - 1)
    out = F.conv2d(x, filters.to(x.dtype), stride=2, padding=pad, groups=c)
    return out.reshape(b, c, 4, out.shape[-2], out.shape[-1])


def inverse_wavelet_transform(x: torch.Tensor, filters: torch.Tensor,
                              size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Inverse transform ``(B, C, 4, h, w) -> (B, C, 2h, 2w)``, cropped to ``size`` if given.

    Args:
        x (Tensor): sub-bands as returned by :func:`wavelet_transform`.
        filters (Tensor): reconstruction filters from :func:`wavelet_filters`, (4C, 1, k, k).
        size (tuple[int, int], optional): ``(H, W)`` of the original input, to undo the padding
            of odd sizes.
    """
    b, c, bands, h, w = x.shape
    if bands != 4 or filters.shape[0] != 4 * c:
        raise ValueError(f'inverse_wavelet_transform: expected (B, {filters.shape[0] // 4}, 4, h, w) '
                         f'sub-bands, got {tuple(x.shape)}')
    if filters.shape[-2:] == (2, 2):
        # stride 2, kernel 2: every 2x2 output block is the four bands at one position times
        # the taps, the transposed product of the forward path
        taps = filters.to(x.dtype).view(c, 4, 2, 2)
        if x.stride(2) == 1 and x.stride(1) == 4 and c > 1:
            # channels-last memory (bands innermost): the output is channels-last too
            out = torch.einsum('bhwck,ckij->bhiwjc', x.permute(0, 3, 4, 1, 2), taps)
            out = out.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
        else:
            out = torch.einsum('bckhw,ckij->bchiwj', x, taps).reshape(b, c, 2 * h, 2 * w)
    else:
        pad = (filters.shape[2] // 2 - 1, filters.shape[3] // 2 - 1)
        out = F.conv_transpose2d(x.reshape(b, 4 * c, h, w), filters.to(x.dtype), stride=2,
                                 padding=pad, groups=c)
    return out if size is None else crop(out, size)


def wavelet_domain_kernel(dec: torch.Tensor, rec: torch.Tensor,
                          weight: torch.Tensor) -> torch.Tensor:
    """``IWT(depthwise_conv(WT(x)))`` for two-tap filters, as the kernel of one grouped conv
    on the polyphase components of ``x`` (:func:`to_polyphase`).

    Output phase ``o`` of channel ``c`` is ``sum_j rec[c, j, o] * (w[c, j] * (sum_i dec[c, j, i]
    * phase_i))``: per channel a 4-in, 4-out conv with the depthwise kernel's size.

    Args:
        dec (Tensor): decomposition filters, (4C, 1, 2, 2) (:func:`wavelet_filters`).
        rec (Tensor): reconstruction filters, (4C, 1, 2, 2).
        weight (Tensor): the depthwise conv on the sub-bands, (4C, 1, k, k'), sub-bands of a
            channel consecutive (LL, LH, HL, HH), as :func:`wavelet_transform` orders them.

    Returns:
        Tensor: (4C, 4, k, k') for ``conv2d(to_polyphase(x), kernel, groups=C,
        padding=(k // 2, k' // 2))``, in the dtype of ``weight``.
    """
    if dec.shape[-2:] != (2, 2) or rec.shape != dec.shape:
        raise ValueError(f'wavelet_domain_kernel: needs two-tap filters (4C, 1, 2, 2), got '
                         f'{tuple(dec.shape)} and {tuple(rec.shape)}')
    c = dec.shape[0] // 4
    if weight.dim() != 4 or weight.shape[:2] != (4 * c, 1):
        raise ValueError(f'wavelet_domain_kernel: weight must be a depthwise kernel '
                         f'({4 * c}, 1, k, k), got {tuple(weight.shape)}')
    kh, kw = weight.shape[-2:]
    # band j of channel c at input phase i (2x2 block position, row-major) / output phase o
    dec64, rec64 = dec.double().view(c, 4, 4), rec.double().view(c, 4, 4)
    kernel = torch.einsum('cjo,cjhw,cji->coihw', rec64, weight.double().view(c, 4, kh, kw), dec64)
    return kernel.reshape(4 * c, 4, kh, kw).to(weight.dtype)


def to_polyphase(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2))``: the pixels of every 2x2 block as the
    four consecutive channels of ``c`` (``pixel_unshuffle``; odd sizes zero-padded on the
    bottom/right as :func:`wavelet_transform` does)."""
    return F.pixel_unshuffle(pad_to_even(x), 2)


def from_polyphase(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_polyphase`: ``(B, 4C, h, w) -> (B, C, H, W)`` with ``(H, W) =
    size`` (``pixel_shuffle``, cropped)."""
    return crop(F.pixel_shuffle(x, 2), size)
