"""Pure tensor math: the selective scan and the wavelet transforms."""
from .selective_scan import (linear_recurrence, selective_scan, selective_scan_channels_last,
                             selective_scan_reference)
from .wavelet import inverse_wavelet_transform, wavelet_filters, wavelet_transform

__all__ = [
    'selective_scan', 'selective_scan_reference', 'selective_scan_channels_last',
    'linear_recurrence', 'wavelet_filters',
    'wavelet_transform', 'inverse_wavelet_transform'
]
