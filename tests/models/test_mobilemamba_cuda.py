"""The MobileMamba backbone on CUDA: the same numbers as on the CPU, in every form it runs in
(training and inference, fused for deployment, either memory format, either scan kernel, half
precision)."""
import pytest
import torch
from cuda_checks import (CUDA_ONLY, DEVICE, assert_all_close_rel, assert_close_rel,
                         forward_backward, on_device, trained_like)
from tiny_models import TINY_ARCH
from torch.nn.modules.batchnorm import _BatchNorm

from mmmobilemamba.models import MobileMamba

pytestmark = CUDA_ONLY


def _tiny(**kwargs) -> MobileMamba:
    torch.manual_seed(0)
    return trained_like(MobileMamba(TINY_ARCH, drop_path_rate=0.0, **kwargs))


def _images(height=64, width=96, batch=2):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def test_forward_and_backward_on_cuda_equal_cpu():
    """Training with frozen BN statistics (norm_eval, the detectors' setting): the outputs,
    the input gradient and every parameter's gradient on CUDA equal the CPU's to 1e-4."""
    cpu = _tiny(norm_eval=True).train()
    x = _images()
    gpu = on_device(cpu).train()
    result = forward_backward(gpu, x.to(DEVICE))
    assert all(p.grad is not None and p.grad.device.type == DEVICE.type
               for p in gpu.parameters())
    assert_all_close_rel(result, forward_backward(cpu, x))


def test_batch_statistics_on_cuda_equal_cpu():
    """Training with batch statistics: one forward gives the same outputs and the same
    updated running statistics of every BN on CUDA as on the CPU. (Gradients compare in the
    test above: with batch statistics, a scale or shift right before a BN has a gradient
    that is zero up to rounding.) 97x130 px: at least 12 values per BN channel at stride 64."""
    cpu = _tiny().train()
    gpu = on_device(cpu).train()
    x = _images(97, 130)
    with torch.no_grad():
        expected, outs = cpu(x), gpu(x.to(DEVICE))
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert_close_rel(out, ref, name=f'out.{i}')
    gpu_buffers = dict(gpu.named_buffers())
    for name, ref in cpu.named_buffers():
        if 'running' in name:
            assert_close_rel(gpu_buffers[name], ref, name=name)


@pytest.mark.parametrize('channels_last', [None, True])
def test_deploy_fusion_on_cuda_equals_the_unfused_model(channels_last):
    """``switch_to_deploy()`` of a model on CUDA: every folded weight stays on the GPU, no BN
    is left, and the outputs equal the unfused model's on CUDA."""
    model = on_device(_tiny(channels_last=channels_last, local_kernel_sizes=(
        (3, 5, 7), (3, 5), (3,)))).eval()
    x = _images(97, 130).to(DEVICE)
    with torch.no_grad():
        expected = model(x)
        model.switch_to_deploy()
        fused = model(x)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == DEVICE.type for t in tensors)
    for i, (out, ref) in enumerate(zip(fused, expected)):
        assert_close_rel(out, ref, name=f'out.{i}')


@pytest.mark.parametrize('channels_last', [None, True, False])
def test_channels_last_input_on_cuda_gives_the_same_result(channels_last):
    """A channels-last input and a contiguous one, with the model computing in NHWC
    (``channels_last=True``), NCHW (False) or its CUDA default (None): the outputs (NCHW
    contiguous) and the input gradients equal those of an NCHW model on a contiguous input."""
    reference = on_device(_tiny(channels_last=False, norm_eval=True)).train()
    model = on_device(_tiny(channels_last=channels_last, norm_eval=True)).train()
    model.load_state_dict(reference.state_dict())
    x = _images(97, 130).to(DEVICE)
    expected = {k: v for k, v in forward_backward(reference, x).items()
                if k.startswith(('out.', 'input.'))}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        result = forward_backward(model, x.contiguous(memory_format=memory_format))
        assert all(result[k].is_contiguous() for k in expected if k.startswith('out.'))
        assert_all_close_rel({k: result[k] for k in expected}, expected)


def test_triton_and_torch_scans_agree_in_the_backbone_on_cuda():
    """The whole backbone with scan_backend 'triton' and 'torch' on CUDA: same outputs, same
    gradients of the input and of every parameter."""
    pytest.importorskip('triton')
    torch_scan = on_device(_tiny(scan_backend='torch', norm_eval=True)).train()
    triton_scan = on_device(_tiny(scan_backend='triton', norm_eval=True)).train()
    triton_scan.load_state_dict(torch_scan.state_dict())
    x = _images().to(DEVICE)
    assert_all_close_rel(forward_backward(triton_scan, x), forward_backward(torch_scan, x))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_backbone_on_cuda_carries_its_wavelet_filters(dtype):
    """The whole backbone moved to CUDA and to half precision: every wavelet filter buffer is
    there in that dtype, the forward runs, and its outputs are finite and within 3% (relative
    L2) of float32 on the CPU."""
    cpu = _tiny().eval()
    x = _images()
    with torch.no_grad():
        expected = cpu(x)
    model = on_device(cpu).to(dtype)
    filters = [b for n, b in model.named_buffers() if n.endswith(('wt_filter', 'iwt_filter'))]
    assert len(filters) == 2 * sum(TINY_ARCH['depths'])  # one WTE-Mamba per block
    assert all(f.device.type == DEVICE.type and f.dtype == dtype for f in filters)
    with torch.no_grad():
        outs = model(x.to(DEVICE, dtype))
    for out, ref in zip(outs, expected):
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.float().cpu() - ref).norm() / ref.norm() < 0.03
