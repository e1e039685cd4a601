"""The scan's Triton kernels compile for the GPU (an H100: sm_90) on a machine without one.

Triton's interpreter runs code that its compiler rejects (a loop-carried variable whose type
changes, for one); here each kernel goes through Triton's whole compiler for the GPU, down to
the binary (:func:`triton_checks.compiled_for_gpu`), in the variants the scan launches.
"""
import importlib

import pytest
import torch
from test_ss2d_scan import ARGS, ss2d_inputs
from triton_checks import compiled_for_gpu

pytest.importorskip('triton')

KERNELS = {'_ss2d_chunk_kernel', '_ss2d_forward_kernel', '_ss2d_backward_kernel',
           '_ss2d_reduce_kernel', '_recurrence_chunk_kernel', '_recurrence_kernel'}


def _compile_scans(monkeypatch, cases, directions):
    """Compile what the forward and backward of each ``(L, N, dtype, chunk_len,
    channels_last)`` case and the recurrence in each of ``directions`` launch; returns the
    ``(kernel, resource usage)`` of each compilation."""
    kernels = importlib.import_module('mmmobilemamba.ops.triton_scan')
    monkeypatch.setattr(kernels, 'can_run', lambda tensor: True)  # compiled, never run
    with compiled_for_gpu([kernels], arch=90) as compiled:
        for length, n, dtype, chunk_len, channels_last in cases:
            args = [ss2d_inputs(length, batch=1, d=64, n=n, dtype=dtype,
                                channels_last=channels_last)[k] for k in ARGS]
            grad_y = torch.randn(1, 1, length, 64).expand(1, 2, length, 64)
            kernels.ss2d_scan_forward(*args, chunk_len=chunk_len)
            kernels.ss2d_scan_backward(grad_y, *args, chunk_len=chunk_len)
        for reverse in directions:
            kernels.recurrence(torch.rand(2, 1000, 40), torch.rand(2, 1000, 40), reverse)
    assert {name for name, _ in compiled} == KERNELS
    for name, usage in compiled:  # within the hardware's 255 registers per thread
        assert usage.get('reg', 0) <= 255, (name, usage)
    return compiled


def test_scan_kernels_compile_for_an_h100(monkeypatch):
    """Every kernel once: float32 NCHW in chunks; bfloat16 channels-last, two states, one
    tile; the recurrence in chunks."""
    _compile_scans(monkeypatch, [(1024, 1, torch.float32, None, False),
                                 (20, 2, torch.bfloat16, None, True)], [False])


@pytest.mark.slow
def test_every_scan_kernel_variant_compiles_for_an_h100(monkeypatch):
    _compile_scans(monkeypatch, [(1024, 1, torch.float32, None, False),
                                 (300, 1, torch.bfloat16, None, True),
                                 (77, 2, torch.float32, 16, False),
                                 (20, 1, torch.float32, None, False),
                                 (20, 2, torch.bfloat16, None, True)], [False, True])
