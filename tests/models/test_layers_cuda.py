"""The building blocks on CUDA: SS2D's Triton scan against its PyTorch scan, and WTE-Mamba's
wavelet filters following the module to the GPU and to half precision."""
import pytest
import torch
from cuda_checks import (CUDA_ONLY, DEVICE, assert_all_close_rel, assert_close_rel,
                         forward_backward, on_device, trained_like)

from mmmobilemamba.models.layers import SS2D, WTEMamba

pytestmark = CUDA_ONLY


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_ss2d_triton_scan_equals_the_torch_scan_on_cuda(channels_last):
    """SS2D with scan_backend 'triton' and 'torch' on CUDA: same output, same gradients of
    the input and of every parameter."""
    pytest.importorskip('triton')
    torch.manual_seed(0)
    torch_scan = on_device(trained_like(SS2D(16, scan_backend='torch')).eval())
    triton_scan = on_device(SS2D(16, scan_backend='triton')).eval()
    triton_scan.load_state_dict(torch_scan.state_dict())
    x = torch.randn(2, 16, 7, 9, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_all_close_rel(forward_backward(triton_scan, x), forward_backward(torch_scan, x))


@pytest.mark.parametrize('dtype,to_dtype,tolerance', [
    (torch.float32, lambda m: m.float(), None),  # None: 1e-4 of the largest value
    (torch.float16, lambda m: m.half(), 0.01),
    (torch.bfloat16, lambda m: m.bfloat16(), 0.03),
], ids=['float32', 'float16', 'bfloat16'])
def test_wte_mamba_wavelet_filters_follow_the_module(dtype, to_dtype, tolerance):
    """``.to('cuda')`` then ``.float()`` / ``.half()`` / ``.bfloat16()`` take the fixed
    wavelet filters (buffers) and the wavelet-domain conv along; the forward runs on CUDA in
    that dtype and equals float32 on the CPU (half precision: to a relative L2 error)."""
    torch.manual_seed(0)
    cpu = trained_like(WTEMamba(16, kernel_size=5)).eval()
    x = torch.randn(2, 16, 10, 13)
    with torch.no_grad():
        expected = cpu(x)
    module = to_dtype(on_device(cpu))
    for tensor in (module.wt_filter, module.iwt_filter, module.wavelet_conv.weight):
        assert tensor.device.type == DEVICE.type and tensor.dtype == dtype
    with torch.no_grad():
        out = module(x.to(DEVICE, dtype))
    assert out.device.type == DEVICE.type and out.dtype == dtype
    assert torch.isfinite(out).all()
    if tolerance is None:
        assert_close_rel(out, expected)
    else:
        error = (out.float().cpu() - expected).norm() / expected.norm()
        assert error < tolerance, float(error)
