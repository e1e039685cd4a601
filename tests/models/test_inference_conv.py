"""InferenceConv2d: oneDNN-packed weights with a fused activation, equal to conv + activation."""
import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmobilemamba.models.layers import InferenceConv2d
from mmmobilemamba.models.layers.inference_conv import _onednn_available

needs_onednn = pytest.mark.skipif(not _onednn_available(), reason='needs oneDNN (CPU build)')
ACTS = {None: lambda x: x, 'relu': F.relu, 'silu': F.silu}


def _pair(activation, **kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).eval()
    return conv, InferenceConv2d.from_conv(conv, activation)


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize('activation', [None, 'relu', 'silu'])
@pytest.mark.parametrize('kwargs', [
    dict(in_channels=16, out_channels=32, kernel_size=1, stride=2),  # strided: not a matmul
    dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1),
    dict(in_channels=24, out_channels=24, kernel_size=5, padding=2, groups=24, bias=False),
])
def test_packed_path_equals_conv_and_activation(activation, kwargs):
    conv, fast = _pair(activation, **kwargs)
    x = _cl(torch.randn(2, kwargs['in_channels'], 13, 10))
    with torch.no_grad():
        assert fast._can_pack(x)
        out = fast(x)
        ref = ACTS[activation](conv(x))
    assert fast._packed is not None  # the packed path ran
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize('activation', [None, 'relu', 'silu'])
@pytest.mark.parametrize('kwargs,size,form', [
    (dict(in_channels=24, out_channels=24, kernel_size=1, groups=24), (13, 10), 'scale'),
    (dict(in_channels=24, out_channels=24, kernel_size=1, groups=24, bias=False), (5, 5), 'scale'),
    (dict(in_channels=40, out_channels=10, kernel_size=1), (1, 1), 'matmul'),
    (dict(in_channels=40, out_channels=10, kernel_size=1, bias=False), (7, 9), 'matmul'),
    (dict(in_channels=40, out_channels=10, kernel_size=1), (16, 16), None),  # 2 x 256 pixels
    (dict(in_channels=24, out_channels=24, kernel_size=3, padding=1, groups=24), (1, 1), None),
])
def test_small_convs_run_as_elementwise_ops(activation, kwargs, size, form):
    """A 1x1 depthwise conv is a per-channel multiply-add and a dense 1x1 conv on a small map
    one matrix product: same results as the conv (channels-last out), no oneDNN call."""
    conv, fast = _pair(activation, **kwargs)
    x = _cl(torch.randn(2, kwargs['in_channels'], *size))
    with torch.no_grad():
        assert fast._can_pack(x) and fast._elementwise_form(x) == form
        out = fast(x)
        ref = ACTS[activation](conv(x))
    onednn = form is None
    assert (fast._packed_key is not None and fast._packed_key[2][0] == 'onednn') == onednn
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_matmul_weight_follows_weight_changes_and_channel_slices():
    conv, fast = _pair('relu', in_channels=8, out_channels=6, kernel_size=1)
    nhwc = _cl(torch.randn(1, 12, 5, 5))
    x = nhwc[:, 2:10]  # a channel slice of an NHWC map, as MRFFI hands its branches
    with torch.no_grad():
        torch.testing.assert_close(fast(x), F.relu(conv(x)), atol=1e-5, rtol=1e-5)
        conv.weight.mul_(-2.0)  # shared parameter changed in place: prepared again
        torch.testing.assert_close(fast(x), F.relu(conv(x)), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packing_follows_input_shape_and_weight_changes():
    conv, fast = _pair('relu', in_channels=8, out_channels=16, kernel_size=1)
    with torch.no_grad():
        for size in [(9, 9), (4, 7), (9, 9)]:  # each new shape packs for that shape
            x = _cl(torch.randn(1, 8, *size))
            torch.testing.assert_close(fast(x), F.relu(conv(x)), atol=1e-5, rtol=1e-5)
        conv.weight.mul_(2.0)  # shared parameter changed in place: packed again
        torch.testing.assert_close(fast(x), F.relu(conv(x)), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_a_conv_built_under_inference_mode_packs():
    """Weights created in inference mode are inference tensors, without a version counter."""
    with torch.inference_mode():
        conv, fast = _pair('relu', in_channels=8, out_channels=16, kernel_size=3, padding=1)
        x = _cl(torch.randn(1, 8, 9, 9))
        torch.testing.assert_close(fast(x), F.relu(conv(x)), atol=1e-5, rtol=1e-5)
    assert fast._packed is not None


def test_fallback_paths_equal_conv_and_keep_gradients():
    conv, fast = _pair('silu', in_channels=6, out_channels=6, kernel_size=3, padding=1)
    x = torch.randn(2, 6, 8, 8)
    assert not fast._can_pack(x)  # NCHW input: plain conv
    torch.testing.assert_close(fast(x), F.silu(conv(x)))
    xg = _cl(x).requires_grad_(True)
    assert not fast._can_pack(xg)  # autograd needs the plain path
    fast(xg).sum().backward()
    xr = _cl(x).requires_grad_(True)
    F.silu(conv(xr)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


@needs_onednn
def test_channel_slice_of_nhwc_map_takes_packed_path():
    conv, fast = _pair(None, in_channels=4, out_channels=5, kernel_size=1)
    x = _cl(torch.randn(1, 10, 6, 6))[:, 3:7]  # channels innermost, not contiguous
    with torch.no_grad():
        assert fast._can_pack(x)
        torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_copies_and_pickles_without_the_packed_weights():
    _, fast = _pair('relu', in_channels=4, out_channels=4, kernel_size=1)
    x = _cl(torch.randn(1, 4, 5, 5))
    with torch.no_grad():
        ref = fast(x)
        clone = copy.deepcopy(fast)
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)  # a module we just made (test only)
        torch.testing.assert_close(clone(x), ref)
        torch.testing.assert_close(loaded(x), ref)
    assert set(fast.state_dict()) == {'weight', 'bias'}


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match='activation'):
        InferenceConv2d(2, 2, 1, activation='gelu')
