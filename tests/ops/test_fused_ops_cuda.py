"""The Triton kernels on real CUDA hardware against their PyTorch twins on the CPU: SS2D's scan
(forward and backward), the Haar inverse add and the gated LayerNorm; the CUDA deploy form and
the compiled backbone on the GPU against the CPU."""
import pytest
import torch
from cuda_checks import (CUDA_ONLY, DEVICE, assert_all_close_rel, assert_close_rel,
                         forward_backward, on_device, trained_like)
from scan_checks import scan_and_grads
from test_ss2d_scan import ss2d_inputs
from tiny_models import TINY_ARCH

from mmmobilemamba.ops import ss2d_scan
from mmmobilemamba.ops.fused_ops import gated_layer_norm, haar_inverse_add

pytestmark = CUDA_ONLY


def _grads_on(device, fn, inputs, **kwargs):
    moved = {k: v.to(device) for k, v in inputs.items()}
    out, grads = scan_and_grads(fn, moved, **kwargs)
    return {'out': out, **grads}


@pytest.mark.parametrize('length,n,dtype', [(1, 1, torch.float32), (1030, 1, torch.float32),
                                            (77, 2, torch.float32), (300, 1, torch.bfloat16)])
def test_ss2d_scan_kernels_equal_the_cpu_twin(length, n, dtype):
    inputs = ss2d_inputs(length, batch=3, d=200, n=n, seed=length, dtype=dtype,
                         channels_last=length == 77)
    cuda = _grads_on(DEVICE, ss2d_scan, inputs, backend='triton')
    cpu = _grads_on('cpu', ss2d_scan, inputs, backend='torch')
    assert_all_close_rel(cuda, cpu, rel=1e-4 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize('size', [(64, 96), (33, 17)])
def test_fused_layer_kernels_equal_the_cpu_twins(size):
    from test_triton_ss2d import _gated_case, _haar_case
    case = _haar_case(size, channels=40)
    assert_all_close_rel(_grads_on(DEVICE, haar_inverse_add, case, backend='triton'),
                         _grads_on('cpu', haar_inverse_add, case, backend='torch'))
    gated = _gated_case(channels_last=False)
    assert_all_close_rel(_grads_on(DEVICE, gated_layer_norm, gated, eps=1e-5, backend='triton'),
                         _grads_on('cpu', gated_layer_norm, gated, eps=1e-5, backend='torch'))


def test_cuda_deploy_form_on_the_gpu_equals_the_unfused_model_on_the_cpu():
    from mmmobilemamba.models import MobileMamba
    model = trained_like(MobileMamba(arch='b1')).eval()
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        expected = model(x)
        deployed = on_device(model).switch_to_deploy()
        assert deployed.deployed == 'cuda'
        for out, ref in zip(deployed(x.to(DEVICE)), expected):
            assert_close_rel(out, ref)


def test_compiled_backbone_trains_on_the_gpu_as_eager():
    """One graph on the GPU with the Triton kernels as its custom-op nodes (AOTAutograd's
    forward and backward graphs; inductor's codegen is timed by the GPU benchmark)."""
    from mmmobilemamba.models import MobileMamba
    torch._dynamo.reset()
    model = on_device(trained_like(MobileMamba(arch=TINY_ARCH, drop_path_rate=0.0))).train()
    x = torch.randn(2, 3, 128, 160, device=DEVICE)
    eager = forward_backward(model, x)
    compiled = forward_backward(torch.compile(model, backend='aot_eager', fullgraph=True), x)
    assert_all_close_rel({k.replace('_orig_mod.', ''): v for k, v in compiled.items()}, eager,
                         rel=1e-3)
