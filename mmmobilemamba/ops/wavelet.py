"""One-level 2-D discrete wavelet transform as fixed-filter (transposed) convolutions.

``wavelet_transform`` maps ``(B, C, H, W) -> (B, C, 4, H/2, W/2)`` with the sub-bands in the
order LL, LH, HL, HH (a stride-2 grouped conv, four 2x2 filters per channel);
``inverse_wavelet_transform`` is its exact inverse (a grouped transposed conv with the
reconstruction filters). Odd ``H``/``W`` are zero-padded on the bottom/right before the
transform; :func:`inverse_wavelet_transform` takes the size to crop back to.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['wavelet_filters', 'wavelet_transform', 'inverse_wavelet_transform']


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


def _taps(filters: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """2x2 filters as per-channel broadcastable taps: (4 bands, 2, 2, 1, C, 1, 1)."""
    taps = filters.to(dtype).view(channels, 4, 2, 2).permute(1, 2, 3, 0)
    return taps.reshape(4, 2, 2, 1, channels, 1, 1)


def wavelet_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Forward transform ``(B, C, H, W) -> (B, C, 4, ceil(H/2), ceil(W/2))``.

    Two-tap filters (Haar) take a fast path of strided slices and per-channel multiply-adds:
    a grouped stride-2 conv with 4C tiny filters is slow in the CPU conv backends. Longer
    filters fall back to the grouped convolution; both compute the same transform.

    Args:
        x (Tensor): input feature map.
        filters (Tensor): decomposition filters from :func:`wavelet_filters`, (4C, 1, k, k).
    """
    b, c, h, w = x.shape
    if filters.shape[0] != 4 * c:
        raise ValueError(f'wavelet_transform: filters are for {filters.shape[0] // 4} channels, '
                         f'input has {c}')
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2))
    if filters.shape[-2:] == (2, 2):
        taps = _taps(filters, c, x.dtype)
        corners = [[x[..., i::2, j::2] for j in (0, 1)] for i in (0, 1)]
        bands = [sum(taps[k, i, j] * corners[i][j] for i in (0, 1) for j in (0, 1))
                 for k in range(4)]
        return torch.stack(bands, dim=2)
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
        # stride 2, kernel 2: every output pixel comes from one input position
        taps = _taps(filters, c, x.dtype)
        out = x.new_empty(b, c, 2 * h, 2 * w)
        for i in (0, 1):
            for j in (0, 1):
                out[..., i::2, j::2] = sum(taps[k, i, j] * x[:, :, k] for k in range(4))
    else:
        pad = (filters.shape[2] // 2 - 1, filters.shape[3] // 2 - 1)
        out = F.conv_transpose2d(x.reshape(b, 4 * c, h, w), filters.to(x.dtype), stride=2,
                                 padding=pad, groups=c)
    if size is not None and tuple(out.shape[-2:]) != tuple(size):
        out = out[..., :size[0], :size[1]]
    return out
