"""The fused layers' custom ops (gated LayerNorm, Haar inverse add, frozen BatchNorm chain and
its fold into a conv): both implementations (the PyTorch twin, and the Triton kernels in
Triton's interpreter) against the unfused modules, values and gradients, in the layouts and
dtypes the model passes; the registrations as the compiler sees them (``opcheck``: schema,
fakes with the real strides, autograd)."""
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from triton_checks import triton_interpreter

pytest.importorskip('triton')
from mmmobilemamba.ops import inverse_wavelet_transform, wavelet_filters  # noqa: E402
from mmmobilemamba.ops.frozen_bn import (_fold_frozen_bn, _fold_frozen_bn_backward,  # noqa: E402
                                         _frozen_bn_act, _frozen_bn_act_backward,
                                         fold_frozen_bn, frozen_bn_act)
from mmmobilemamba.ops.fused_ops import (  # noqa: E402
    _gated_layer_norm, _gated_layer_norm_backward, _haar_inverse_add, _haar_inverse_add_backward,
    gated_layer_norm, haar_inverse_add)

BACKENDS = ('torch', 'triton')
NHWC = torch.channels_last


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


@pytest.fixture(params=[False, True], ids=['one-program-per-channel', 'partial-sums'])
def split_sums(request, monkeypatch):
    """Both ways the kernels sum a channel: in one program, or by partial sums and a
    reduction (forced with a tiny per-program share)."""
    if request.param:
        monkeypatch.setattr(sys.modules['mmmobilemamba.ops.triton_common'], 'PER_PROGRAM', 5)
    return request.param


def _grads(fn, inputs, constants=('taps',)):
    """Output and the gradient of every floating input (but ``constants``: the fixed wavelet
    filters) under a weighted sum of the output."""
    leaves = {k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor)
              and v.is_floating_point() and k not in constants else v
              for k, v in inputs.items()}
    out = fn(**leaves)
    weight = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    (out.float() * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()
                          if isinstance(v, torch.Tensor) and v.grad is not None}


def _assert_same(actual, expected, atol=1e-5, rtol=1e-4):
    (out, grads), (ref, ref_grads) = actual, expected
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    assert grads.keys() == ref_grads.keys(), set(grads) ^ set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name].float(), grad.float(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f'{name}: {m}')


# ------------------------------------------------------------------ gated LayerNorm
def _gated_inputs(directions=None, channels_last=False, size=(3, 5), d=20, seed=0,
                  dtype=torch.float32):
    """y token-major (B, L, D) or per direction (B, K, L, D) (a strided view, as the scan's
    output may be), z a channel slice of a map (SS2D's gate)."""
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = 2, size
    if directions is None:
        y = torch.randn(b, h * w, d, generator=g)
    else:  # not contiguous: read where it is
        y = torch.randn(b, h * w, directions, d, generator=g).transpose(1, 2)
    z = torch.randn(b, 2 * d, h, w, generator=g)
    if channels_last:
        z = z.contiguous(memory_format=NHWC)
    return dict(y=y, z=z[:, d:].to(dtype), weight=torch.randn(d, generator=g),
                bias=torch.randn(d, generator=g))


def _gated_unfused(y, z, weight, bias):
    b, d, h, w = z.shape
    y = y.sum(1) if y.dim() == 4 else y
    normed = F.layer_norm(y.float(), (d,), weight, bias, 1e-5)
    return normed.view(b, h, w, d).permute(0, 3, 1, 2) * F.silu(z.float())


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('directions', [None, 1, 2], ids=['summed', 'K=1', 'K=2'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_gated_layer_norm_per_direction(backend, directions, channels_last, split_sums):
    """y summed or per direction, z either layout: values, every gradient; the output and
    z's gradient in z's memory format; y's gradient computed once, handed to every
    direction as one expanded view."""
    inputs = _gated_inputs(directions, channels_last)
    expected = _grads(_gated_unfused, inputs)
    actual = _grads(lambda **kw: gated_layer_norm(**kw, eps=1e-5, backend=backend), inputs)
    _assert_same(actual, expected, atol=1e-4)
    layout = NHWC if channels_last else torch.contiguous_format
    assert actual[0].is_contiguous(memory_format=layout)
    assert actual[1]['z'].is_contiguous(memory_format=layout)
    if directions is not None:  # as the scan's backward receives it (before accumulation)
        y = inputs['y'].detach().clone().requires_grad_(True)
        seen = []
        y.register_hook(seen.append)
        gated_layer_norm(y, inputs['z'], inputs['weight'], inputs['bias'], 1e-5,
                         backend=backend).sum().backward()
        b, _, length, d = y.shape  # one (B, L, D) tensor, every direction a view of it
        assert seen[0].shape == y.shape and seen[0].untyped_storage().nbytes() == \
            b * length * d * seen[0].element_size()
        assert directions == 1 or seen[0].stride(1) == 0


@pytest.mark.parametrize('backend', BACKENDS)
def test_gated_layer_norm_bfloat16_gate(backend):
    """A bfloat16 gate (autocast): the output and z's gradient in bfloat16, y's in float32."""
    inputs = _gated_inputs(2, dtype=torch.bfloat16)
    out, grads = _grads(lambda **kw: gated_layer_norm(**kw, eps=1e-5, backend=backend), inputs)
    assert out.dtype == grads['z'].dtype == torch.bfloat16
    assert grads['y'].dtype == torch.float32
    ref, ref_grads = _grads(_gated_unfused, {**inputs, 'z': inputs['z'].float()})
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads['y'], ref_grads['y'], atol=2e-2, rtol=2e-2)


def test_gated_layer_norm_rejects_mismatched_shapes():
    inputs = _gated_inputs()
    with pytest.raises(ValueError, match=r'y must be \(B, L, D\)'):
        gated_layer_norm(inputs['y'][:, :-1], inputs['z'], inputs['weight'], inputs['bias'],
                         1e-5)
    with pytest.raises(ValueError, match='weight and bias'):
        gated_layer_norm(inputs['y'], inputs['z'], inputs['weight'][:-1], inputs['bias'], 1e-5)


# ------------------------------------------------------------------ Haar inverse add
def _haar_inputs(size=(7, 6), channels=3, channels_last=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    base = torch.randn(2, channels, h, w, generator=g)
    bands = torch.randn(2, 4 * channels, (h + 1) // 2, (w + 1) // 2, generator=g)
    if channels_last:
        base, bands = base.contiguous(memory_format=NHWC), bands.contiguous(memory_format=NHWC)
    return dict(bands=bands.to(dtype), base=base.to(dtype), taps=wavelet_filters(channels)[1],
                band_scale=torch.randn(4 * channels, generator=g),
                base_scale=torch.randn(channels, generator=g))


def _haar_unfused(bands, base, taps, band_scale, base_scale):
    b, c, h, w = base.shape
    scaled = bands.float() * band_scale.view(1, -1, 1, 1)
    return base.float() * base_scale.view(1, -1, 1, 1) + inverse_wavelet_transform(
        scaled.reshape(b, c, 4, *bands.shape[-2:]), taps, (h, w))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('size', [(7, 6), (4, 8)])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_haar_inverse_add_layouts_and_sums(backend, size, channels_last, split_sums):
    """Values and every gradient (the scales' summed in one program per channel or by partial
    sums); the output and the gradients in their inputs' memory formats."""
    inputs = _haar_inputs(size, channels_last=channels_last)
    actual = _grads(lambda **kw: haar_inverse_add(**kw, backend=backend), inputs)
    _assert_same(actual, _grads(_haar_unfused, inputs))
    layout = NHWC if channels_last else torch.contiguous_format
    for t in (actual[0], actual[1]['base'], actual[1]['bands']):
        assert t.is_contiguous(memory_format=layout)


@pytest.mark.parametrize('backend', BACKENDS)
def test_haar_inverse_add_bfloat16(backend):
    inputs = _haar_inputs(dtype=torch.bfloat16)
    out, grads = _grads(lambda **kw: haar_inverse_add(**kw, backend=backend), inputs)
    assert out.dtype == grads['bands'].dtype == grads['base'].dtype == torch.bfloat16
    assert grads['band_scale'].dtype == torch.float32
    ref = _haar_unfused(**inputs)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)


def test_haar_inverse_add_rejects_mismatched_bands():
    inputs = _haar_inputs()
    with pytest.raises(ValueError, match=r'bands must be \(B, 4C, ceil\(H/2\), ceil\(W/2\)\)'):
        haar_inverse_add(inputs['bands'][:, :, :-1], inputs['base'], inputs['taps'])


# ------------------------------------------------------------------ frozen BatchNorm chain
def _frozen_bn(channels, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g) * 0.3)
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    return bn


def _params(bn):
    return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps


CHAINS = {  # (relu, scale, second BN, residual, drop path, outer): as the layers use it
    'bn+relu': (True, False, False, False, False, False),          # ConvBN, ReLU
    'bn+residual': (False, False, False, True, False, False),      # FFN's second unit
    'bn+relu+scale+bn': (True, True, True, False, False, False),   # MK-DeConv
    'block end': (False, False, False, True, True, True),          # x + drop_path(ffn(y))
}


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('chain', sorted(CHAINS))
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_frozen_bn_act_equals_the_modules(backend, chain, channels_last, split_sums):
    relu, with_scale, with_second, with_residual, with_drop, with_outer = CHAINS[chain]
    c = 5
    bn1, bn2 = _frozen_bn(c, 1), _frozen_bn(c, 2)
    scale = nn.Conv2d(c, c, 1, groups=c, bias=False)
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(3, c, 4, 7, generator=g) for _ in range(3)]
    if channels_last:
        maps = [m.contiguous(memory_format=NHWC) for m in maps]
    mask, gain = torch.tensor([1.0, 0.0, 1.0]), 1 / 0.8
    params = [bn1.weight, bn1.bias, bn2.weight, bn2.bias, scale.weight]

    def modules(x, residual, outer):
        y = bn1(x)
        y = torch.relu(y) if relu else y
        y = scale(y) if with_scale else y
        y = bn2(y) if with_second else y
        y = y + residual if with_residual else y
        y = y * (mask * gain).view(-1, 1, 1, 1) if with_drop else y
        return y + outer if with_outer else y

    def fused(x, residual, outer):
        return frozen_bn_act(x, *_params(bn1), relu=relu,
                             scale=scale.weight if with_scale else None,
                             second=_params(bn2) if with_second else None,
                             residual=residual if with_residual else None,
                             sample_scale=mask if with_drop else None, sample_gain=gain,
                             outer=outer if with_outer else None, backend=backend)

    def run(fn):
        for p in params:
            p.grad = None
        out, grads = _grads(fn, dict(x=maps[0], residual=maps[1], outer=maps[2]))
        grads.update({f'param{i}': p.grad for i, p in enumerate(params) if p.grad is not None})
        return out, {k: v for k, v in grads.items() if v.abs().sum() > 0 or k == 'x'}

    actual = run(fused)
    _assert_same(actual, run(modules))
    layout = NHWC if channels_last else torch.contiguous_format
    assert actual[0].is_contiguous(memory_format=layout)
    assert actual[1]['x'].is_contiguous(memory_format=layout)


@pytest.mark.parametrize('backend', BACKENDS)
def test_frozen_bn_act_bfloat16(backend):
    """A bfloat16 conv output (autocast): the output and its gradient in bfloat16, the
    parameters' in float32."""
    bn = _frozen_bn(4, 0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.bfloat16)
    out, grads = _grads(lambda x: frozen_bn_act(x, *_params(bn), relu=True, backend=backend),
                        dict(x=x))
    assert out.dtype == grads['x'].dtype == torch.bfloat16 and bn.weight.grad.dtype == \
        torch.float32
    torch.testing.assert_close(out.float(), torch.relu(bn(x.float())), atol=2e-2, rtol=2e-2)


def test_frozen_bn_act_rejects_bad_parameters():
    bn, x = _frozen_bn(4, 0), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r'running_var must hold one value per channel \(4\)'):
        frozen_bn_act(x, bn.weight, bn.bias, bn.running_mean, bn.running_var[:3], bn.eps)
    with pytest.raises(ValueError, match='residual'):
        frozen_bn_act(x, *_params(bn), residual=x[:, :2])
    with pytest.raises(ValueError, match=r'sample_scale must hold one value per image \(2,\)'):
        frozen_bn_act(x, *_params(bn), sample_scale=torch.ones(3))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('identity', [False, True])
def test_fold_frozen_bn_equals_conv_then_bn(backend, identity):
    """``conv(x, w', b') = [x +] BN(conv(x, w))``, and the gradients of the weight and the
    norm's weight and bias through the fold equal those through the modules."""
    c = 6
    conv, bn = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), _frozen_bn(c, 4)
    x = torch.randn(2, c, 5, 4)
    params = (conv.weight, bn.weight, bn.bias)

    def run(fused):
        for p in params:
            p.grad = None
        if fused:
            weight, bias = fold_frozen_bn(conv.weight, *_params(bn), identity=identity,
                                          backend=backend)
            out = F.conv2d(x, weight, bias, padding=1, groups=c)
        else:
            out = bn(conv(x)) + (x if identity else 0)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {i: p.grad.clone() for i, p in enumerate(params)}

    _assert_same(run(True), run(False))


def test_fold_frozen_bn_rejects_identity_on_a_dense_conv():
    bn = _frozen_bn(4, 0)
    with pytest.raises(ValueError, match='identity needs a depthwise weight'):
        fold_frozen_bn(torch.randn(4, 2, 3, 3), *_params(bn), identity=True)


# ------------------------------------------------------------------ as the compiler sees them
def _leaves(*tensors):
    return tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('grad_layout', ['nchw', 'nhwc'])
def test_fused_ops_pass_opcheck(backend, dtype, grad_layout):
    """Schema, fakes with the real strides (NCHW and channels-last incoming gradients, maps
    in either layout), autograd registration and AOT dispatch of every fused op and of its
    backward, for both implementations."""
    fmt = NHWC if grad_layout == 'nhwc' else torch.contiguous_format

    def grad_like(t):
        return torch.randn(t.shape, dtype=t.dtype).contiguous(memory_format=fmt)

    gated = _gated_inputs(2, channels_last=grad_layout == 'nhwc', dtype=dtype)
    y, z, w, b = _leaves(gated['y'], gated['z'], gated['weight'], gated['bias'])
    torch.library.opcheck(_gated_layer_norm, (y, z, w, b, 1e-5, backend))
    torch.library.opcheck(_gated_layer_norm_backward, (grad_like(z), y.detach(), z.detach(),
                                                       w.detach(), b.detach(), 1e-5, backend))

    haar = _haar_inputs(channels_last=grad_layout == 'nhwc', dtype=dtype)
    args = _leaves(*(haar[k] for k in ('bands', 'base', 'taps', 'band_scale', 'base_scale')))
    torch.library.opcheck(_haar_inverse_add, args + (backend,))
    torch.library.opcheck(_haar_inverse_add, args[:3] + (None, None, backend))
    detached = tuple(a.detach() for a in args)
    torch.library.opcheck(_haar_inverse_add_backward,
                          (grad_like(haar['base']),) + detached + (backend,))
    torch.library.opcheck(_haar_inverse_add_backward,
                          (grad_like(haar['base']),) + detached[:3] + (None, None, backend))

    bn1, bn2 = _frozen_bn(5, 1), _frozen_bn(5, 2)
    x, res, outer = _leaves(*(torch.randn(2, 5, 3, 4, dtype=dtype).contiguous(memory_format=fmt)
                              for _ in range(3)))
    p1, p2 = _leaves(bn1.weight, bn1.bias), _leaves(bn2.weight, bn2.bias)
    stats1, stats2 = (bn1.running_mean, bn1.running_var), (bn2.running_mean, bn2.running_var)
    scale = _leaves(torch.rand(5, 1, 1, 1))[0]
    mask = torch.tensor([1.0, 0.0])
    full = (x, *p1, *stats1, 1e-5, True, scale, *p2, *stats2, 1e-3, res, mask, 1.25, outer,
            backend)
    torch.library.opcheck(_frozen_bn_act, full)
    torch.library.opcheck(_frozen_bn_act, (x, *p1, *stats1, 1e-5, False) + (None,) * 5
                          + (0.0, None, None, 1.0, None, backend))
    torch.library.opcheck(_frozen_bn_act_backward, (
        grad_like(x), x.detach(), *(t.detach() for t in p1), *stats1, 1e-5, True,
        scale.detach(), *(t.detach() for t in p2), *stats2, 1e-3, True, mask, 1.25, backend))

    conv_weight = _leaves(torch.randn(5, 1, 3, 3))[0]
    torch.library.opcheck(_fold_frozen_bn, (conv_weight, *p1, *stats1, 1e-5, True, None, backend))
    torch.library.opcheck(_fold_frozen_bn, (conv_weight, *p1, *stats1, 1e-5, True, torch.bfloat16,
                                            backend))
    torch.library.opcheck(_fold_frozen_bn_backward, (
        torch.randn(5, 1, 3, 3), torch.randn(5), conv_weight.detach(), p1[0].detach(), *stats1,
        1e-5, backend))
