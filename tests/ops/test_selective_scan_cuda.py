"""The selective scan on CUDA: every backend equals the sequential twin run on the CPU, in values
and in the gradients of every input (token-major and reference layouts)."""
import pytest
import torch
from cuda_checks import CUDA_ONLY, DEVICE, assert_close_rel
from scan_checks import token_major_inputs

from mmmobilemamba.ops import (selective_scan, selective_scan_channels_last,
                               selective_scan_channels_last_reference, selective_scan_reference)
from mmmobilemamba.ops.selective_scan import _mamba_ssm_scan, _triton_scan

pytestmark = CUDA_ONLY

# (asked only where there is a GPU: without one, CUDA_ONLY skips)
needs_triton = pytest.mark.skipif(torch.cuda.is_available() and _triton_scan() is None,
                                  reason='needs Triton')
needs_mamba_ssm = pytest.mark.skipif(torch.cuda.is_available() and _mamba_ssm_scan() is None,
                                     reason='needs mamba_ssm')
TOKEN_BACKENDS = ['torch', pytest.param('triton', marks=needs_triton), 'auto', 'reference']
LAYOUT_BACKENDS = TOKEN_BACKENDS + [pytest.param('cuda', marks=needs_mamba_ssm)]


def _tokens(length, n=1, batch=2, d=6, seed=0, delta_scale=1.0):
    """One direction's inputs in the token-major layout (batch, L, D), on the CPU."""
    return token_major_inputs(batch, length, d, n, seed, delta_scale)


def _reference_layout(length, n=1, batch=2, k=2, d=4, seed=0):
    """The authors' layout: u, delta (batch, K*D, L), B, C (batch, K, N, L), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(batch, k * d, length, generator=g),
                delta=torch.randn(batch, k * d, length, generator=g),
                A=-torch.rand(k * d, n, generator=g) - 0.05,
                B=torch.randn(batch, k, n, length, generator=g),
                C=torch.randn(batch, k, n, length, generator=g),
                D=torch.randn(k * d, generator=g),
                delta_bias=0.1 * torch.randn(k * d, generator=g))


def _run(fn, inputs, device, **kwargs):
    """Output and the gradient of every input of ``fn`` on ``device``, returned on the CPU."""
    # copies: leaves of their own, also where ``device`` is the CPU
    leaves = {k: v.detach().clone().to(device).requires_grad_(True)
              for k, v in inputs.items()}
    out = fn(**leaves, **kwargs)
    assert out.device.type == torch.device(device).type
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()}


def _assert_same(fast, twin, rel=1e-4):
    (out, grads), (ref, ref_grads) = fast, twin
    assert_close_rel(out, ref, rel, 'output')
    for name, ref_grad in ref_grads.items():
        assert_close_rel(grads[name], ref_grad, rel, f'grad of {name}')


@pytest.mark.parametrize('backend', TOKEN_BACKENDS)
@pytest.mark.parametrize('reverse', [False, True], ids=['forward', 'reverse'])
@pytest.mark.parametrize('length,n', [(1, 1), (37, 1), (300, 1), (37, 3)])
def test_token_major_scan_on_cuda_equals_the_cpu_twin(backend, reverse, length, n):
    """The scan SS2D runs, on CUDA with each backend, against the sequential twin on the CPU:
    values and the gradients of u, delta, A, B, C, D and delta_bias."""
    inputs = _tokens(length, n, seed=length + n)
    _assert_same(_run(selective_scan_channels_last, inputs, DEVICE, reverse=reverse,
                      backend=backend),
                 _run(selective_scan_channels_last_reference, inputs, 'cpu', reverse=reverse))


@pytest.mark.parametrize('backend', LAYOUT_BACKENDS)
@pytest.mark.parametrize('length,n', [(1, 1), (65, 1), (65, 2)])
def test_reference_layout_scan_on_cuda_equals_the_cpu_twin(backend, length, n):
    """The public reference-layout scan (both directions in one call), on CUDA with each
    backend ('cuda': mamba_ssm's kernel), against the sequential twin on the CPU."""
    inputs = _reference_layout(length, n, seed=length + n)
    _assert_same(_run(selective_scan, inputs, DEVICE, backend=backend),
                 _run(selective_scan_reference, inputs, 'cpu'))


@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=needs_triton)])
@pytest.mark.parametrize('reverse', [False, True], ids=['forward', 'reverse'])
def test_long_token_major_scan_on_cuda_equals_the_cpu_twin(backend, reverse):
    """L = 4200 (more than 4096), one image: the Triton recurrence in chunks with a carry."""
    inputs = _tokens(4200, batch=1, d=40, seed=4200)
    _assert_same(_run(selective_scan_channels_last, inputs, DEVICE, reverse=reverse,
                      backend=backend),
                 _run(selective_scan_channels_last, inputs, 'cpu', reverse=reverse,
                      backend='torch'))


@needs_triton
@pytest.mark.parametrize('reverse', [False, True], ids=['forward', 'reverse'])
def test_triton_recurrence_with_forced_chunks_on_cuda(reverse):
    from mmmobilemamba.ops import triton_scan
    from mmmobilemamba.ops.scan_torch import chunked_recurrence
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(3, 500, 70, generator=g), torch.randn(3, 500, 70, generator=g)
    expected = chunked_recurrence(a, b, reverse)
    for chunk_len in (1, 9, 64, 500):
        got = triton_scan.recurrence(a.to(DEVICE), b.to(DEVICE), reverse, chunk_len=chunk_len)
        assert_close_rel(got, expected, name=f'chunk_len {chunk_len}')


@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=needs_triton)])
@pytest.mark.parametrize('delta_scale', [1e-6, 1e4])
def test_extreme_deltas_on_cuda_stay_finite_and_equal_the_twin(backend, delta_scale):
    """Steps near zero (no decay) and huge (instant decay): finite values and gradients on
    CUDA, equal to the twin's (the tolerance of the CPU tests of these extremes)."""
    inputs = _tokens(120, delta_scale=delta_scale)
    fast = _run(selective_scan_channels_last, inputs, DEVICE, reverse=True, backend=backend)
    assert torch.isfinite(fast[0]).all() and all(torch.isfinite(g).all()
                                                 for g in fast[1].values())
    _assert_same(fast, _run(selective_scan_channels_last_reference, inputs, 'cpu', reverse=True),
                 rel=1e-3)


@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=needs_triton)])
def test_bfloat16_inputs_on_cuda_are_scanned_in_float32(backend):
    """bfloat16 inputs give a bfloat16 output that is the float32 scan of the same values,
    rounded once at the end."""
    inputs = {k: v.to(DEVICE, torch.bfloat16) for k, v in _tokens(50).items()}
    with torch.no_grad():
        out = selective_scan_channels_last(**inputs, backend=backend)
        exact = selective_scan_channels_last(**{k: v.float() for k, v in inputs.items()},
                                             backend=backend)
    assert out.dtype == torch.bfloat16 and out.device.type == DEVICE.type
    torch.testing.assert_close(out, exact.to(torch.bfloat16), atol=0, rtol=0)
