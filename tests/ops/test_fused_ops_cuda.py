"""The Triton kernels on real CUDA hardware against their PyTorch twins on the CPU: SS2D's scan
(forward and backward, per direction, chunked by the plan and forced), the Haar inverse add,
the gated LayerNorm, the frozen BatchNorm chain and its fold into a conv (values and every
gradient, float32 and bfloat16, either layout); the CUDA deploy form and the compiled backbone
on the GPU against the CPU. Every tensor a test makes beside a device's output is made on that
output's device."""
import pytest
import torch
from cuda_checks import (CUDA_ONLY, DEVICE, assert_all_close_rel, assert_close_rel,
                         forward_backward, on_device, trained_like)
from scan_checks import scan_and_grads
from test_ss2d_scan import ARGS, ss2d_inputs
from tiny_models import TINY_ARCH

from mmmobilemamba.ops import ss2d_scan
from mmmobilemamba.ops.frozen_bn import fold_frozen_bn, frozen_bn_act
from mmmobilemamba.ops.fused_ops import gated_layer_norm, haar_inverse_add

pytestmark = CUDA_ONLY


def _grads_on(device, fn, inputs, **kwargs):
    moved = {k: v.to(device) for k, v in inputs.items()}
    out, grads = scan_and_grads(fn, moved, **kwargs)
    return {'out': out, **grads}


@pytest.mark.parametrize('length,batch,d,n,dtype', [
    (1, 3, 200, 1, torch.float32), (1030, 3, 200, 1, torch.float32),
    (77, 3, 200, 2, torch.float32), (300, 3, 200, 1, torch.bfloat16),
    (1024, 1, 320, 1, torch.float32),    # B1's first stage at 512x512, batch 1: in 16 chunks
    (1024, 1, 320, 1, torch.bfloat16), (4200, 1, 64, 1, torch.float32)])
def test_ss2d_scan_kernels_equal_the_cpu_twin(length, batch, d, n, dtype):
    """Each direction's output and every gradient on the GPU against the CPU twin; the
    summed output's gradient is expanded over the directions (stride 0)."""
    inputs = ss2d_inputs(length, batch=batch, d=d, n=n, seed=length, dtype=dtype,
                         channels_last=length == 77)
    rel = 1e-4 if dtype == torch.float32 else 2e-2
    for sum_directions in (False, True):
        cuda = _grads_on(DEVICE, ss2d_scan, inputs, backend='triton',
                         sum_directions=sum_directions)
        cpu = _grads_on('cpu', ss2d_scan, inputs, backend='torch', sum_directions=sum_directions)
        assert_all_close_rel(cuda, cpu, rel=rel)


def test_ss2d_scan_kernels_with_forced_chunks_equal_the_cpu_twin():
    """Chunks of one step, of a ragged tile, of two tiles and of the whole sequence."""
    from mmmobilemamba.ops import scan_torch, triton_scan
    inputs = ss2d_inputs(300, batch=2, d=70, n=2, seed=5)
    args = [inputs[k] for k in ARGS]
    on_gpu = [a.to(DEVICE) for a in args]
    grad_y = torch.randn(2, 2, 300, 70)
    expected = {'y': scan_torch.ss2d_scan_forward_torch(*args),
                **dict(zip(ARGS, scan_torch.ss2d_scan_backward_torch(grad_y, *args)))}
    for chunk_len in (1, 7, 64, 300):
        got = {'y': triton_scan.ss2d_scan_forward(*on_gpu, chunk_len=chunk_len),
               **dict(zip(ARGS, triton_scan.ss2d_scan_backward(grad_y.to(DEVICE), *on_gpu,
                                                               chunk_len=chunk_len)))}
        assert_all_close_rel(got, expected)


def test_ss2d_scan_on_the_gpu_is_deterministic_and_reads_gradients_where_they_are():
    """Two runs give the same bits, under ``torch.use_deterministic_algorithms(True)`` too;
    a gradient expanded over the directions equals its materialised copy bit for bit."""
    from mmmobilemamba.ops import triton_scan
    length, d = 1024, 320  # B1's first stage at 512x512: 16 chunks
    args = [ss2d_inputs(length, batch=1, d=d, seed=6)[k].to(DEVICE) for k in ARGS]
    expanded = torch.randn(1, 1, length, d, device=DEVICE).expand(1, 2, length, d)

    def run(grad_y):
        return (triton_scan.ss2d_scan_forward(*args),
                *triton_scan.ss2d_scan_backward(grad_y, *args))

    first = run(expanded)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = run(expanded)
    finally:
        torch.use_deterministic_algorithms(before)
    for one, again, in_mode, materialised in zip(first, run(expanded), deterministic,
                                                 run(expanded.contiguous())):
        assert torch.equal(one, again) and torch.equal(one, in_mode)
        assert torch.equal(one, materialised)


def _fused_on(device, fn, inputs, **kwargs):
    """Output and gradients of a fused op on ``device`` (the twin on the CPU), on the CPU."""
    from test_fused_ops import _grads
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    backend = 'triton' if torch.device(device).type == 'cuda' else 'torch'
    out, grads = _grads(lambda **kw: fn(**kw, **kwargs, backend=backend), moved)
    assert out.device.type == torch.device(device).type
    return {'out': out.cpu(), **{k: v.cpu() for k, v in grads.items()}}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('size', [(64, 96), (33, 17)])
def test_fused_layer_kernels_equal_the_cpu_twins(size, channels_last, dtype):
    from test_fused_ops import _frozen_bn, _gated_inputs, _haar_inputs, _params
    rel = 1e-4 if dtype == torch.float32 else 2e-2
    haar = _haar_inputs(size, channels=40, channels_last=channels_last, dtype=dtype)
    assert_all_close_rel(_fused_on(DEVICE, haar_inverse_add, haar),
                         _fused_on('cpu', haar_inverse_add, haar), rel)
    gated = _gated_inputs(2, channels_last, size=size, dtype=dtype)
    assert_all_close_rel(_fused_on(DEVICE, gated_layer_norm, gated, eps=1e-5),
                         _fused_on('cpu', gated_layer_norm, gated, eps=1e-5), rel)
    bn1, bn2 = _frozen_bn(40, 1), _frozen_bn(40, 2)
    x = torch.randn(3, 40, *size).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    chain = dict(x=x, residual=torch.randn_like(x), outer=torch.randn_like(x),
                 scale=torch.rand(40, 1, 1, 1), sample_scale=torch.tensor([1.0, 0.0, 1.0]))

    def frozen(x, residual, outer, scale, sample_scale, backend):
        device = x.device
        first = [t.to(device) for t in _params(bn1)[:4]]
        second = tuple(t.to(device) for t in _params(bn2)[:4]) + (bn2.eps,)
        return frozen_bn_act(x, *first, bn1.eps, relu=True, scale=scale, second=second,
                             residual=residual, sample_scale=sample_scale, sample_gain=1.25,
                             outer=outer, backend=backend)

    assert_all_close_rel(_fused_on(DEVICE, frozen, chain), _fused_on('cpu', frozen, chain), rel)
    conv = torch.randn(40, 1, 3, 3)

    def folded(weight, backend):
        params = [t.to(weight.device) for t in _params(bn1)[:4]]
        return fold_frozen_bn(weight, *params, bn1.eps, identity=True, dtype=dtype,
                              backend=backend)[0]

    assert_all_close_rel(_fused_on(DEVICE, folded, dict(weight=conv)),
                         _fused_on('cpu', folded, dict(weight=conv)), rel)


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
