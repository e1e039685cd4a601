"""Model analysis: parameters and FLOPs (our custom ops included), inference latency."""
from .custom_ops import selective_scan_flops, traceable_custom_ops, wavelet_flops
from .flops import ComplexityReport, analyze_complexity, config_complexity, tensor_mode

__all__ = ['ComplexityReport', 'analyze_complexity', 'config_complexity', 'tensor_mode',
           'selective_scan_flops', 'wavelet_flops', 'traceable_custom_ops']
