"""The Triton kernels of SS2D's scan and of the CUDA deploy form's fused layers, against their
PyTorch twins, on CPU through Triton's interpreter.

The test sets ``TRITON_INTERPRET=1`` (the package never does) and re-imports the kernel modules
so that their kernels are built for the interpreter; afterwards they are restored.
"""
import importlib
import os

import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads
from test_ss2d_scan import ss2d_inputs

pytest.importorskip('triton')
from mmmobilemamba.ops import (inverse_wavelet_transform, ss2d_scan,  # noqa: E402
                              ss2d_scan_reference, wavelet_filters, wavelet_transform)
from mmmobilemamba.ops.fused_ops import (gated_layer_norm, gated_layer_norm_torch,  # noqa: E402
                                         haar_inverse_add, haar_inverse_add_torch)

_KERNEL_MODULES = ('mmmobilemamba.ops.triton_scan', 'mmmobilemamba.ops.triton_fused')


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    before = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    modules = [importlib.import_module(name) for name in _KERNEL_MODULES]
    for module in modules:
        importlib.reload(module)
    yield
    if before is None:
        del os.environ['TRITON_INTERPRET']
    else:
        os.environ['TRITON_INTERPRET'] = before
    for module in modules:
        importlib.reload(module)


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


@pytest.mark.parametrize('size', [(6, 8), (7, 5), (1, 1)])
def test_haar_inverse_add_kernel_and_twin_equal_the_inverse_transform(size):
    h, w = size
    channels = 3
    _, rec = wavelet_filters(channels)
    x = torch.randn(2, channels, h, w)
    bands = wavelet_transform(x, wavelet_filters(channels)[0])       # (B, C, 4, h/2, w/2)
    bands = bands * torch.randn(1, channels, 4, 1, 1)                 # not a plain round trip
    base = torch.randn(2, channels, h, w)
    expected = base + inverse_wavelet_transform(bands, rec, (h, w))
    flat = bands.reshape(2, 4 * channels, *bands.shape[-2:])
    taps = rec[:4, 0]
    torch.testing.assert_close(haar_inverse_add_torch(flat, base, taps), expected)
    torch.testing.assert_close(haar_inverse_add(flat, base, taps, 'triton'), expected)


@pytest.mark.parametrize('channels_last', [False, True])
def test_gated_layer_norm_kernel_and_twin(channels_last):
    b, d, h, w = 2, 40, 3, 5
    y = torch.randn(b, h * w, d)
    z = torch.randn(b, d, h, w)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(d), torch.randn(d)
    expected = (torch.nn.functional.layer_norm(y, (d,), weight, bias, 1e-5)
                .view(b, h, w, d).permute(0, 3, 1, 2) * torch.nn.functional.silu(z))
    twin = gated_layer_norm_torch(y, z, weight, bias, 1e-5)
    torch.testing.assert_close(twin, expected)
    assert twin.is_contiguous()
    out = gated_layer_norm(y, z, weight, bias, 1e-5, 'triton')
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous()
