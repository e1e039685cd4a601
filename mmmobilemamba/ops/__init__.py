"""Pure tensor math: the selective scan and the wavelet transforms."""
from .graph_scan_op import ss2d_scan_graph_op
from .memory_format import channels_innermost, memory_format_of
from .selective_scan import (selective_scan, selective_scan_channels_last,
                             selective_scan_channels_last_reference, selective_scan_reference,
                             ss2d_scan, ss2d_scan_reference)
from .wavelet import (from_polyphase, inverse_wavelet_transform, to_polyphase,
                      wavelet_domain_kernel, wavelet_filters, wavelet_transform)

__all__ = [
    'selective_scan', 'selective_scan_reference', 'selective_scan_channels_last',
    'selective_scan_channels_last_reference', 'ss2d_scan', 'ss2d_scan_reference',
    'wavelet_filters', 'wavelet_transform',
    'inverse_wavelet_transform', 'wavelet_domain_kernel', 'to_polyphase', 'from_polyphase',
    'channels_innermost', 'memory_format_of', 'ss2d_scan_graph_op'
]
