"""The Haar wavelet transform pair."""
import pytest
import torch
import torch.nn.functional as F

from mmmobilemamba.ops import (from_polyphase, inverse_wavelet_transform, to_polyphase,
                               wavelet_domain_kernel, wavelet_filters, wavelet_transform)


@pytest.mark.parametrize('size', [(8, 8), (7, 9), (1, 1), (33, 45)])
def test_inverse_reproduces_input(size):
    x = torch.randn(2, 5, *size)
    dec, rec = wavelet_filters(5)
    bands = wavelet_transform(x, dec)
    assert bands.shape == (2, 5, 4, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(inverse_wavelet_transform(bands, rec, size), x, atol=1e-6, rtol=1e-6)


def test_haar_bands_are_averages_and_differences():
    x = torch.tensor([[1., 2.], [3., 4.]]).view(1, 1, 2, 2)
    dec, _ = wavelet_filters(1)
    ll, lh, hl, hh = wavelet_transform(x, dec)[0, 0, :, 0, 0].tolist()
    assert ll == pytest.approx(5.0)           # (1 + 2 + 3 + 4) / 2
    assert abs(lh) == pytest.approx(2.0)      # rows differ by 2 per pixel
    assert abs(hl) == pytest.approx(1.0)      # columns differ by 1 per pixel
    assert hh == pytest.approx(0.0)


def test_filters_match_the_release():
    import pathlib
    fx = torch.load(pathlib.Path(__file__).parent.parent / 'data' / 'mobilemamba_tiny_parity.pt')
    sd = fx['state_dict']
    key = 'blocks1.0.mixer.m.attn.global_op.'
    dec, rec = wavelet_filters(sd[key + 'wt_filter'].shape[0] // 4)
    torch.testing.assert_close(dec, sd[key + 'wt_filter'], atol=1e-6, rtol=0)
    torch.testing.assert_close(rec, sd[key + 'iwt_filter'], atol=1e-6, rtol=0)


def test_channel_mismatch_raises():
    dec, _ = wavelet_filters(3)
    with pytest.raises(ValueError, match='filters are for 3 channels'):
        wavelet_transform(torch.randn(1, 4, 8, 8), dec)


@pytest.mark.parametrize('size', [(8, 10), (7, 9)])
def test_fast_haar_path_equals_grouped_convolution(size):
    """The slice-based Haar path computes exactly the stride-2 grouped (transposed) conv."""
    import torch.nn.functional as F
    x = torch.randn(2, 3, *size)
    dec, rec = wavelet_filters(3)
    padded = F.pad(x, (0, size[1] % 2, 0, size[0] % 2))
    conv = F.conv2d(padded, dec, stride=2, groups=3)
    bands = wavelet_transform(x, dec)
    torch.testing.assert_close(bands, conv.view_as(bands), atol=1e-6, rtol=1e-6)
    inv = F.conv_transpose2d(conv, rec, stride=2, groups=3)
    torch.testing.assert_close(inverse_wavelet_transform(bands, rec), inv, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('size', [(8, 8), (7, 9), (1, 1), (6, 11)])
@pytest.mark.parametrize('kernel', [(3, 3), (5, 5), (1, 3)])
def test_conv_between_transform_pair_is_one_polyphase_conv(size, kernel):
    """IWT(depthwise conv(WT(x))) = from_polyphase(grouped conv(to_polyphase(x)))."""
    c = 3
    x = torch.randn(2, c, *size, dtype=torch.float64)
    dec, rec = wavelet_filters(c, dtype=torch.float64)
    weight = torch.randn(4 * c, 1, *kernel, dtype=torch.float64)
    padding = (kernel[0] // 2, kernel[1] // 2)
    bands = wavelet_transform(x, dec)
    bands = F.conv2d(bands.flatten(1, 2), weight, padding=padding, groups=4 * c)
    ref = inverse_wavelet_transform(bands.view(2, c, 4, *bands.shape[-2:]), rec, size)
    out = from_polyphase(F.conv2d(to_polyphase(x), wavelet_domain_kernel(dec, rec, weight),
                                  padding=padding, groups=c), size)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_polyphase_round_trip_and_bad_filters():
    x = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(from_polyphase(to_polyphase(x), (5, 6)), x, atol=0, rtol=0)
    dec, rec = wavelet_filters(2, 'db2')  # four taps: not a 2x2-block transform
    with pytest.raises(ValueError, match='two-tap'):
        wavelet_domain_kernel(dec, rec, torch.randn(8, 1, 3, 3))
    dec, rec = wavelet_filters(2)
    with pytest.raises(ValueError, match='depthwise kernel'):
        wavelet_domain_kernel(dec, rec, torch.randn(8, 4, 3, 3))
