"""The Triton kernels of SS2D's scan and of the CUDA deploy form's fused layers, against their
PyTorch twins, on CPU through Triton's interpreter.

The tests run the kernels in Triton's interpreter (:func:`triton_checks.triton_interpreter`).
"""
import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads
from test_ss2d_scan import ss2d_inputs
from triton_checks import triton_interpreter

pytest.importorskip('triton')
from mmmobilemamba.ops import (inverse_wavelet_transform, ss2d_scan,  # noqa: E402
                              ss2d_scan_reference, wavelet_filters, wavelet_transform)
from mmmobilemamba.ops.fused_ops import (gated_layer_norm, gated_layer_norm_torch,  # noqa: E402
                                         haar_inverse_add)

@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


@pytest.mark.parametrize('length,n', [(1, 1), (6, 1), (23, 2)])
def test_ss2d_kernels_equal_the_twin(length, n):
    """Forward and backward kernels: values and every gradient; 70 channels = two blocks."""
    inputs = ss2d_inputs(length, d=70, n=n, seed=length, channels_last=length == 6)
    fast = scan_and_grads(ss2d_scan, inputs, backend='triton')
    assert_same_scan(fast, scan_and_grads(ss2d_scan, inputs, backend='torch'))
    assert_same_scan(fast, scan_and_grads(ss2d_scan_reference, inputs))


def test_ss2d_kernel_reads_bfloat16_as_it_is():
    inputs = ss2d_inputs(9, dtype=torch.bfloat16)
    torch.testing.assert_close(ss2d_scan(**inputs, backend='triton'),
                               ss2d_scan(**inputs, backend='torch'), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('delta_scale', [1e-6, 30.0, 1e4])
def test_ss2d_kernel_extreme_deltas(delta_scale):
    inputs = ss2d_inputs(12)
    inputs['delta'] = inputs['delta'] * delta_scale
    fast = scan_and_grads(ss2d_scan, inputs, backend='triton')
    assert torch.isfinite(fast[0]).all() and all(torch.isfinite(g).all()
                                                 for g in fast[1].values())
    assert_same_scan(fast, scan_and_grads(ss2d_scan_reference, inputs), atol=1e-3,
                     grad_atol=1e-2)


def _haar_case(size, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    dec, rec = wavelet_filters(channels)
    bands = wavelet_transform(torch.randn(2, channels, h, w, generator=g), dec)
    bands = bands.reshape(2, 4 * channels, *bands.shape[-2:])
    bands = bands * torch.randn(1, 4 * channels, 1, 1, generator=g)  # not a plain round trip
    return dict(bands=bands, base=torch.randn(2, channels, h, w, generator=g), taps=rec,
                band_scale=torch.randn(4 * channels, generator=g),
                base_scale=torch.randn(channels, generator=g))


@pytest.mark.parametrize('size', [(6, 8), (7, 5), (1, 1)])
def test_haar_inverse_add_equals_the_inverse_transform(size):
    """Twin and kernel: ``base * s + IWT(bands * t)``, also without scales."""
    case = _haar_case(size)
    channels = case['base'].shape[1]
    bands = case['bands'] * case['band_scale'].view(1, -1, 1, 1)
    expected = case['base'] * case['base_scale'].view(1, -1, 1, 1) + inverse_wavelet_transform(
        bands.reshape(2, channels, 4, *bands.shape[-2:]), case['taps'], size)
    for backend in ('torch', 'triton'):
        torch.testing.assert_close(haar_inverse_add(**case, backend=backend), expected)
        plain = haar_inverse_add(case['bands'], case['base'], case['taps'], backend=backend)
        torch.testing.assert_close(plain, case['base'] + inverse_wavelet_transform(
            case['bands'].reshape(2, channels, 4, *bands.shape[-2:]), case['taps'], size))


def _gradients(fn, inputs, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()
              if k != 'taps'}
    out = fn(**leaves, **{k: v for k, v in inputs.items() if k == 'taps'}, **kwargs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize('size', [(6, 8), (7, 5)])
def test_haar_inverse_add_gradients(size):
    """Backward kernel and twin against autograd through the unfused transform."""
    case = _haar_case(size, seed=1)
    channels = case['base'].shape[1]

    def unfused(bands, base, taps, band_scale, base_scale):
        scaled = bands * band_scale.view(1, -1, 1, 1)
        return base * base_scale.view(1, -1, 1, 1) + inverse_wavelet_transform(
            scaled.reshape(2, channels, 4, *bands.shape[-2:]), taps, size)

    expected = _gradients(unfused, case)
    for backend in ('torch', 'triton'):
        out, grads = _gradients(haar_inverse_add, case, backend=backend)
        torch.testing.assert_close(out, expected[0])
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, name=name: f'{backend} {name}: {m}')


def _gated_case(channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, d, h, w = 2, 40, 3, 5
    z = torch.randn(b, 2 * d, h, w, generator=g)[:, d:]  # a channel slice, as SS2D's gate
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    return dict(y=torch.randn(b, h * w, d, generator=g), z=z,
                weight=torch.randn(d, generator=g), bias=torch.randn(d, generator=g))


def _gated_unfused(y, z, weight, bias):
    b, d, h, w = z.shape
    return (torch.nn.functional.layer_norm(y, (d,), weight, bias, 1e-5)
            .view(b, h, w, d).permute(0, 3, 1, 2) * torch.nn.functional.silu(z))


@pytest.mark.parametrize('channels_last', [False, True])
def test_gated_layer_norm_values_and_gradients(channels_last):
    case = _gated_case(channels_last)
    expected = _gradients(_gated_unfused, case)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    twin = gated_layer_norm_torch(**case, eps=1e-5)
    assert twin.is_contiguous(memory_format=layout)  # the gate's memory format
    torch.testing.assert_close(twin, expected[0])
    for backend in ('torch', 'triton'):
        out, grads = _gradients(gated_layer_norm, case, eps=1e-5, backend=backend)
        assert out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, expected[0], atol=1e-5, rtol=1e-5)
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-4,
                                       msg=lambda m, name=name: f'{backend} {name}: {m}')
