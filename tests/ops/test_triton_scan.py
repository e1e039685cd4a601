"""The Triton selective scan against its sequential twin, on CPU through Triton's interpreter.

The tests run the kernels in Triton's interpreter (:func:`triton_checks.triton_interpreter`).
"""
import importlib

import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads
from triton_checks import triton_interpreter

pytest.importorskip('triton')
from mmmobilemamba.ops import (selective_scan, selective_scan_channels_last,  # noqa: E402
                              selective_scan_channels_last_reference, selective_scan_reference)

scan_module = importlib.import_module('mmmobilemamba.ops.selective_scan')


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


def _tokens(length, batch=2, d=6, n=1, seed=0, delta_scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, length, d, generator=g).to(dtype),
        delta=(delta_scale * torch.randn(batch, length, d, generator=g)).to(dtype),
        A=(-torch.rand(d, n, generator=g) - 0.05).to(dtype),
        B=torch.randn(batch, length, n, generator=g).to(dtype),
        C=torch.randn(batch, length, n, generator=g).to(dtype),
        D=torch.randn(d, generator=g).to(dtype),
        delta_bias=(0.1 * torch.randn(d, generator=g)).to(dtype),
    )


@pytest.mark.parametrize('length', [1, 2, 37, 1030])
@pytest.mark.parametrize('reverse', [False, True])
def test_kernel_equals_the_twin(length, reverse):
    """Values and the gradients of every input, both directions."""
    inputs = _tokens(length, seed=length)
    assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend='triton'),
          scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse))


def test_more_states_than_one():
    inputs = _tokens(17, n=3)
    assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, reverse=True, backend='triton'),
          scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=True))


def test_grouped_projections():
    """B/C per channel group: the layout SS2D scans both directions in."""
    inputs = _tokens(29, d=8, n=2)
    g = torch.Generator().manual_seed(5)
    inputs['B'], inputs['C'] = (torch.randn(2, 29, 2, 2, generator=g) for _ in range(2))
    assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, backend='triton'),
                     scan_and_grads(selective_scan_channels_last_reference, inputs))


@pytest.mark.parametrize('delta_scale', [1e-6, 30.0, 1e4])
def test_extreme_deltas(delta_scale):
    inputs = _tokens(40, delta_scale=delta_scale)
    fast = scan_and_grads(selective_scan_channels_last, inputs, backend='triton')
    assert torch.isfinite(fast[0]).all() and all(torch.isfinite(g).all()
                                                 for g in fast[1].values())
    assert_same_scan(fast, scan_and_grads(selective_scan_channels_last_reference, inputs), atol=1e-3,
          grad_atol=1e-2)


def test_bfloat16_inputs_keep_a_float32_state():
    inputs = _tokens(37, dtype=torch.bfloat16)
    out = selective_scan_channels_last(**inputs, backend='triton')
    assert out.dtype == torch.bfloat16
    ref = selective_scan_channels_last_reference(**{k: v.float() for k, v in inputs.items()})
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)
    # the same bfloat16 inputs in float32 give the same result up to the output rounding
    exact = selective_scan_channels_last(**{k: v.float() for k, v in inputs.items()},
                                         backend='triton')
    torch.testing.assert_close(out, exact.to(torch.bfloat16), atol=0, rtol=0)


def test_reference_layout_with_the_triton_backend():
    g = torch.Generator().manual_seed(3)
    inputs = dict(u=torch.randn(2, 8, 21, generator=g), delta=torch.randn(2, 8, 21, generator=g),
                  A=-torch.rand(8, 1, generator=g), B=torch.randn(2, 2, 1, 21, generator=g),
                  C=torch.randn(2, 2, 1, 21, generator=g), D=torch.randn(8, generator=g),
                  delta_bias=torch.randn(8, generator=g))
    assert_same_scan(scan_and_grads(selective_scan, inputs, backend='triton'),
          scan_and_grads(selective_scan_reference, inputs))


def test_ss2d_with_the_triton_backend_equals_the_reference():
    from mmmobilemamba.models.layers import SS2D
    fast, slow = SS2D(8, scan_backend='triton').eval(), SS2D(8, scan_backend='reference').eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-4)


def test_auto_picks_triton_on_cuda_and_logs_it_once(monkeypatch):
    from mmengine.logging import MMLogger
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    MMLogger.get_current_instance().addHandler(handler)
    monkeypatch.setattr(scan_module, '_AUTO_CHOICES_LOGGED', set())
    try:
        cuda = torch.device('cuda')
        assert scan_module.resolve_backend('auto', cuda) == 'triton'
        assert scan_module.resolve_backend('auto', cuda) == 'triton'
        assert scan_module.resolve_backend('auto', torch.device('cpu')) == 'torch'
        assert scan_module.resolve_backend('reference', cuda) == 'reference'
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    messages = [r.getMessage() for r in records if 'selective scan on CUDA' in r.getMessage()]
    assert messages == ["selective scan on CUDA (backend 'auto'): Triton's kernel"]


def test_without_triton_auto_falls_back(monkeypatch):
    monkeypatch.setattr(scan_module, '_triton_scan', lambda: None)
    monkeypatch.setattr(scan_module, '_mamba_ssm_scan', lambda: None)
    monkeypatch.setattr(scan_module, '_AUTO_CHOICES_LOGGED', {'torch'})
    assert scan_module.resolve_backend('auto', torch.device('cuda')) == 'torch'


def test_cpu_tensors_without_the_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET')
    with pytest.raises(RuntimeError, match="'triton' needs CUDA tensors"):
        selective_scan_channels_last(**_tokens(5), backend='triton')
