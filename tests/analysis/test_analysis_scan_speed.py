"""Scan timing per backend (tools/analysis/benchmark_scan.py)."""
import pytest
import torch

from mmmobilemamba.analysis.scan_speed import available_backends, time_scan_backends


def test_cpu_runs_the_pytorch_scan_only():
    assert available_backends(torch.device('cpu')) == ['torch']


def test_every_backend_asked_for_is_timed():
    ms = time_scan_backends(1, 20, 4, backends=['torch', 'reference'], repeats=2, warmup=1)
    assert set(ms) == {'torch', 'reference'} and all(v > 0 for v in ms.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_offers_triton_when_it_imports():
    from mmmobilemamba.ops.selective_scan import _triton_scan
    backends = available_backends(torch.device('cuda'))
    assert backends[0] == 'torch' and ('triton' in backends) == (_triton_scan() is not None)
    ms = time_scan_backends(2, 300, 32, 'cuda', repeats=2, warmup=1)
    assert set(ms) == set(backends)
