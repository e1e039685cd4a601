"""The building blocks on their own: ConvBN folding, SS2D, WTE-Mamba."""
import pytest
import torch
import torch.nn as nn

from mmmobilemamba.models.layers import SS2D, ConvBN, ResidualDWConv, WTEMamba, fuse_conv_bn


def _random_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return module.eval()


@pytest.mark.parametrize('kwargs', [dict(kernel_size=1), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, padding=1, groups=8)])
def test_conv_bn_folds_exactly(kwargs):
    m = _random_bn(ConvBN(8, 16 if kwargs.get('groups', 1) == 1 else 8, **kwargs))
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        ref = m(x)
        m.switch_to_deploy()
        out = m(x)
    assert isinstance(m.bn, nn.Identity) and m.conv.bias is not None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_residual_dw_conv_folds_identity():
    m = _random_bn(ResidualDWConv(6))
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        ref = m(x)
        m.switch_to_deploy()
        out = m(x)
    assert m.identity_folded
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_fuse_refuses_norms_without_statistics():
    with pytest.raises(TypeError, match='only BatchNorm'):
        fuse_conv_bn(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (16, 16)])
def test_ss2d_shapes_and_gradients(size):
    m = SS2D(32)
    x = torch.randn(2, 32, *size, requires_grad=True)
    out = m(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for name in ('x_proj_weight', 'dt_projs_weight', 'dt_projs_bias', 'A_logs', 'Ds'):
        assert getattr(m, name).grad is not None, name


def test_ss2d_release_parameter_layout():
    m = SS2D(112)  # T2 stage 0 global group
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes['x_proj_weight'] == (2, 9, 224)
    assert shapes['dt_projs_weight'] == (2, 224, 7)
    assert shapes['A_logs'] == (448, 1)
    assert shapes['in_proj.conv.weight'] == (448, 112, 1, 1)
    assert (m.Ds == 1).all() and (m.A_logs == 0).all()


def test_ss2d_is_per_image():
    """No batch coupling: each image's output is what it gets alone."""
    m = _random_bn(SS2D(16))
    x = torch.randn(3, 16, 6, 5)
    with torch.no_grad():
        batched = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_ss2d_fast_scan_equals_sequential_scan():
    fast = _random_bn(SS2D(16))
    slow = _random_bn(SS2D(16, scan_backend='reference'))
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-4)


def test_ss2d_scan_sees_the_whole_image():
    """Both directions: changing the last pixel changes the first output and vice versa."""
    m = _random_bn(SS2D(16))
    with torch.no_grad():
        m.A_logs.fill_(-5.0)  # slow decay: a long memory, visible across 35 steps
    x = torch.randn(1, 16, 6, 6)
    y = x.clone()
    y[..., -1, -1] += 5
    with torch.no_grad():
        diff = (m(x) - m(y)).abs().sum(1)[0]
    assert diff[0, 0] > 0 and diff[2, 3] > 0


@pytest.mark.parametrize('size', [(8, 8), (7, 9), (3, 4), (1, 1)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_wte_mamba_deploy_fold(size, channels_last):
    """Scales folded and the Haar pair folded around the wavelet conv (one polyphase conv)."""
    m = _random_bn(WTEMamba(16, kernel_size=5))
    with torch.no_grad():
        m.ssm_scale.uniform_(0.5, 1.5)
        m.wavelet_scale.uniform_(0.05, 0.3)
        m.wavelet_conv.weight.normal_()  # a wavelet branch as large as the scan's
    x = torch.randn(2, 16, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = m(x)
        for sub in reversed(list(m.modules())):
            if hasattr(sub, 'switch_to_deploy'):
                sub.switch_to_deploy()
        out = m(x)
    assert m.polyphase and m.wavelet_conv.weight.shape == (64, 4, 5, 5)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_wavelet_filters_are_buffers_not_parameters():
    m = WTEMamba(16, kernel_size=3)
    names = {n for n, _ in m.named_parameters()}
    assert 'wt_filter' not in names and 'wt_filter' not in m.state_dict()


@pytest.mark.parametrize('channels_last', [False, True])
def test_ss2d_channels_last_scan_equals_reference_layout(channels_last):
    """The default PyTorch path (token order, both directions as channel groups of one scan)
    against the reference layout with explicit flips (the 'reference' backend): values and
    gradients."""
    fast = _random_bn(SS2D(16))
    slow = _random_bn(SS2D(16, scan_backend='reference'))
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = fast(xa), slow(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-4)
    # the output keeps the memory format of the input
    assert ya.is_contiguous(memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)
    weight = torch.linspace(-1, 1, ya.numel()).view_as(ya)
    (ya * weight).sum().backward()
    (yb * weight).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
    for (name, pa), (_, pb) in zip(fast.named_parameters(), slow.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-3, msg=name)
