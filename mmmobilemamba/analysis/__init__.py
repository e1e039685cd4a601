"""Model analysis: parameters and FLOPs (selective scan included), inference latency."""
from .flops import ComplexityReport, analyze_complexity, config_complexity, tensor_mode
from .scan_flops import selective_scan_flops, traceable_selective_scan

__all__ = ['ComplexityReport', 'analyze_complexity', 'config_complexity', 'tensor_mode',
           'selective_scan_flops', 'traceable_selective_scan']
