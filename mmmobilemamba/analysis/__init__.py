"""Model analysis: parameters and FLOPs (our custom ops included), operator counts, inference
latency."""
from .custom_ops import selective_scan_flops, traceable_custom_ops, wavelet_flops
from .flops import ComplexityReport, analyze_complexity, config_complexity, tensor_mode
from .op_count import OpCount, OpCounter, count_forward, count_ops, count_train_step

__all__ = ['ComplexityReport', 'analyze_complexity', 'config_complexity', 'tensor_mode',
           'selective_scan_flops', 'wavelet_flops', 'traceable_custom_ops', 'OpCount', 'OpCounter',
           'count_ops', 'count_forward', 'count_train_step']
