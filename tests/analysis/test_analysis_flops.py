"""FLOP counting: the selective scan and wavelets by formula, nothing of ours uncounted."""
import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmengine')
ops = pytest.importorskip('mmmobilemamba.ops')
from mmmobilemamba.analysis import (analyze_complexity, selective_scan_flops,  # noqa: E402
                                    traceable_custom_ops, wavelet_flops)


class OneScan(nn.Module):
    """Calls the op through its package attribute, as a model module would by name."""

    def __init__(self, with_d: bool = True) -> None:
        super().__init__()
        self.with_d = with_d

    def forward(self, u, delta, A, B, C, D):
        return ops.selective_scan(u, delta, A, B, C, D if self.with_d else None,
                                  delta_bias=D, delta_softplus=True)


def scan_inputs(batch=2, k=2, d=3, n=4, length=5):
    return (torch.randn(batch, k * d, length), torch.randn(batch, k * d, length),
            -torch.rand(k * d, n), torch.randn(batch, k, n, length),
            torch.randn(batch, k, n, length), torch.rand(k * d))


def test_formula():
    assert selective_scan_flops(2, 6, 4, 5) == 9 * 2 * 6 * 4 * 5 + 2 * 6 * 5
    assert selective_scan_flops(2, 6, 4, 5, with_d=False) == 9 * 2 * 6 * 4 * 5


@pytest.mark.parametrize('with_d', [True, False])
def test_scan_counted_by_formula_and_nothing_else(with_d):
    report = analyze_complexity(OneScan(with_d), scan_inputs())
    expected = selective_scan_flops(2, 6, 4, 5, with_d=with_d)
    assert report.flops == expected
    assert report.flops_by_operator == {'PythonOp.SelectiveScanOp': expected}
    assert report.unsupported_ops == {}
    # its internals (softplus, exp, the recurrence) are inside the one op, not in the trace
    assert report.uncounted_elementwise == {}
    assert report.activations == 2 * 6 * 5


def test_patch_keeps_results_and_restores_the_function():
    original = ops.selective_scan
    inputs = scan_inputs()
    expected = OneScan()(*inputs)
    with traceable_custom_ops():
        assert ops.selective_scan is not original
        patched = OneScan()(*inputs)
    assert ops.selective_scan is original
    torch.testing.assert_close(patched, expected)


def test_ss2d_scan_is_counted():
    ss2d = pytest.importorskip('mmmobilemamba.models.layers.ss2d')
    module = ss2d.SS2D(8).eval()
    report = analyze_complexity(module, torch.randn(1, 8, 6, 6))
    # two directions over the inner width 16, d_state 1, 36 tokens, with D: one op for both,
    # the token-major scan on a channels-last map (the default on CPU), the fused ss2d_scan on
    # an NCHW one (CUDA's path)
    expected = selective_scan_flops(1, 2 * module.inner_channels, module.d_state, 36)
    x = torch.randn(1, 8, 6, 6)
    report = analyze_complexity(module, x.contiguous(memory_format=torch.channels_last))
    assert report.flops_by_operator['PythonOp.SelectiveScanChannelsLastOp'] == expected
    assert 'PythonOp.SS2DScanOp' not in report.flops_by_operator
    report = analyze_complexity(module, x)
    assert report.flops_by_operator['PythonOp.SS2DScanOp'] == expected
    # the reference layout counts the same
    module.scan_backend = 'reference'
    report = analyze_complexity(module, torch.randn(1, 8, 6, 6))
    assert report.flops_by_operator['PythonOp.SelectiveScanOp'] == selective_scan_flops(
        1, 2 * module.inner_channels, module.d_state, 36)
    assert not any('PythonOp' in op for op in report.unsupported_ops)
    assert not any('PythonOp' in op for op in report.uncounted_elementwise)


class Wavelets(nn.Module):

    def __init__(self, channels: int) -> None:
        super().__init__()
        dec, rec = ops.wavelet_filters(channels)
        self.register_buffer('dec', dec)
        self.register_buffer('rec', rec)

    def forward(self, x):
        bands = ops.wavelet_transform(x, self.dec)
        return ops.inverse_wavelet_transform(bands, self.rec, tuple(x.shape[-2:]))


def test_wavelet_formula_is_the_grouped_conv_count():
    # 2x2 stride-2 filters: each of the B * 4C * h * w sub-band values is 4 multiply-adds
    assert wavelet_flops(1, 3, 4, 4) == 1 * 4 * 3 * 4 * 4 * 4


@pytest.mark.parametrize('size', [8, 7])
def test_wavelet_transforms_counted_by_formula(size):
    channels = 3
    report = analyze_complexity(Wavelets(channels), torch.randn(1, channels, size, size))
    half = (size + 1) // 2  # odd sizes are padded before the transform
    per_transform = wavelet_flops(1, channels, half, half)
    assert report.flops_by_operator == {'PythonOp.WaveletTransformOp': per_transform,
                                        'PythonOp.InverseWaveletTransformOp': per_transform}
    assert report.unsupported_ops == {} and report.uncounted_elementwise == {}


def test_patch_keeps_wavelet_results():
    module, x = Wavelets(2), torch.randn(1, 2, 6, 10)
    expected = module(x)
    with traceable_custom_ops():
        torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(expected, x)  # the Haar pair is an exact inverse


def test_backbone_has_no_uncounted_ops_of_ours():
    backbones = pytest.importorskip('mmmobilemamba.models.backbones')
    from tiny_models import TINY_ARCH
    model = backbones.MobileMamba(arch=TINY_ARCH).eval()
    report = analyze_complexity(model, torch.randn(1, 3, 64, 64), max_depth=2)
    assert report.unsupported_ops == {}
    assert report.flops_by_operator['PythonOp.SelectiveScanChannelsLastOp'] > 0
    assert report.flops_by_operator['PythonOp.WaveletTransformOp'] > 0
    assert report.flops_by_operator['PythonOp.InverseWaveletTransformOp'] > 0
    assert report.params == sum(p.numel() for p in model.parameters())
    assert 'stages' in report.table and 'Flops' in report.summary()
    assert set(report.top_level()) == {'patch_embed', 'stages'}


def test_unknown_custom_op_is_reported_not_dropped():

    class Mystery(torch.autograd.Function):

        @staticmethod
        def forward(ctx, x):
            return x * 2

    class UsesMystery(nn.Module):

        def forward(self, x):
            return Mystery.apply(x)

    report = analyze_complexity(UsesMystery(), torch.randn(2, 3))
    assert report.unsupported_ops == {'prim::PythonOp.Mystery': 1}
    assert 'WARNING' in report.summary() and 'Mystery' in report.summary()
