"""The wavelet transform pair on CUDA: the CPU's results, in either memory format, from filters
moved to the GPU and to half precision."""
import pytest
import torch
from cuda_checks import CUDA_ONLY, DEVICE, assert_close_rel

from mmmobilemamba.ops import inverse_wavelet_transform, wavelet_filters, wavelet_transform

pytestmark = CUDA_ONLY


@pytest.mark.parametrize('wavelet', ['db1', 'db2'])  # Haar's matrix path, the conv path
@pytest.mark.parametrize('size', [(8, 10), (7, 9)])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_transform_pair_on_cuda_equals_cpu(wavelet, size, channels_last):
    """Sub-bands and their inverse computed on CUDA, with the filters moved there, equal the
    CPU's; the Haar pair also reproduces the input."""
    x = torch.randn(2, 6, *size, generator=torch.Generator().manual_seed(0))
    dec, rec = wavelet_filters(6, wavelet)
    bands = wavelet_transform(x, dec)
    restored = inverse_wavelet_transform(bands, rec, size)
    x_gpu = x.to(DEVICE)
    if channels_last:
        x_gpu = x_gpu.contiguous(memory_format=torch.channels_last)
    bands_gpu = wavelet_transform(x_gpu, dec.to(DEVICE))
    restored_gpu = inverse_wavelet_transform(bands_gpu, rec.to(DEVICE), size)
    assert bands_gpu.device.type == restored_gpu.device.type == DEVICE.type
    assert_close_rel(bands_gpu, bands, name='bands')
    assert_close_rel(restored_gpu, restored, name='inverse')
    if wavelet == 'db1':
        assert_close_rel(restored_gpu, x, name='inverse of the transform')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_filters_on_cuda(dtype):
    """Filters built in (or moved to) half precision on CUDA transform a half-precision map
    in that dtype, to within its rounding of the float32 result on the CPU."""
    x = torch.randn(2, 6, 8, 10, generator=torch.Generator().manual_seed(0))
    dec, rec = wavelet_filters(6)
    half_dec = wavelet_filters(6, dtype=dtype)[0].to(DEVICE)  # built in half precision
    half_rec = rec.to(DEVICE).to(dtype)                         # moved there
    assert half_dec.dtype == half_rec.dtype == dtype
    bands = wavelet_transform(x.to(DEVICE, dtype), half_dec)
    restored = inverse_wavelet_transform(bands, half_rec)
    assert bands.dtype == restored.dtype == dtype
    assert bands.device.type == restored.device.type == DEVICE.type
    assert_close_rel(bands, wavelet_transform(x, dec), rel=1e-2, name='bands')
    assert_close_rel(restored, x, rel=1e-2, name='inverse of the transform')
