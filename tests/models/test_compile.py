"""One graph: the backbone and neck compile with ``torch.compile(fullgraph=True)`` (Dynamo never
breaks, the scan backends being custom ops), in eval and training, with outputs and gradients
equal to eager, with the PyTorch scan and with the Triton scan (run by Triton's interpreter);
detection-style input sizes do not recompile.

Most tests compile with the 'aot_eager' backend: Dynamo's trace and AOTAutograd's (fake-tensor)
forward/backward graphs are what can break, and it needs no C++ build; one slow test runs
inductor, torch.compile's default.
"""
import pytest
import torch
from tiny_models import TINY_ARCH, TINY_CHANNELS

from mmmobilemamba.models import MobileMamba, MobileMambaFPN


def _model(scan_backend='torch', seed=0):
    torch.manual_seed(seed)
    # NCHW as on CUDA (and as compiled: eager CPU computes channels-last by default)
    backbone = MobileMamba(arch=TINY_ARCH, drop_path_rate=0.0, scan_backend=scan_backend,
                           channels_last=False)
    neck = MobileMambaFPN(in_channels=TINY_CHANNELS, out_channels=16, num_outs=5,
                          num_deconv_levels=2)
    model = torch.nn.Sequential(backbone, neck)
    # non-trivial BN statistics and zero-init branches switched on
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _loss(outs):
    return sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)


def _train_step(model, x):
    model.zero_grad(set_to_none=True)
    outs = model(x)
    _loss(outs).backward()
    names = {n.replace('_orig_mod.', ''): p for n, p in model.named_parameters()}
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in names.items()
                                        if p.grad is not None}


def _assert_same(eager, compiled, atol=1e-5):
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-4)


@pytest.mark.parametrize('scan_backend', ['torch', 'triton'])
def test_fullgraph_eval_and_training_equal_eager(scan_backend, triton_interpreter):
    if scan_backend == 'triton' and not triton_interpreter:
        pytest.skip('triton not installed')
    torch._dynamo.reset()
    model = _model(scan_backend)
    x = torch.randn(2, 3, 128, 160)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    model.eval()
    with torch.no_grad():
        _assert_same(model(x), compiled(x))
    model.train()
    eager_out, eager_grads = _train_step(model, x)
    out, grads = _train_step(compiled, x)
    _assert_same(eager_out, out)
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-3,
                                   msg=lambda m, name=name: f'{name}: {m}')


def test_deployed_forms_compile_as_one_graph():
    torch._dynamo.reset()
    for device in ('cpu', 'cuda'):
        backbone = _model()[0]
        backbone.switch_to_deploy(device=device)
        x = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            torch.testing.assert_close(
                torch.compile(backbone, backend='aot_eager', fullgraph=True)(x), backbone(x),
                atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_detection_sizes_compile_once():
    """Batches padded to multiples of 32 change size step to step: one dynamic graph serves
    them all (the wavelet pads and crops do not branch on the parity of a size). Sizes whose
    smallest maps have no side of 1 (PyTorch specialises sizes 0 and 1, as for any model)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = _model().train()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)
    for h, w in ((256, 320), (352, 288)):  # sides of 8 x 10, then of 11 x 9 strides of 32
        _train_step(compiled, torch.randn(2, 3, h, w))
    assert counters['stats']['unique_graphs'] == 1


@pytest.mark.slow
def test_inductor_compiles_the_backbone_and_neck():
    """torch.compile's default backend: generated kernels, same outputs and gradients."""
    torch._dynamo.reset()
    model = _model()
    x = torch.randn(2, 3, 128, 128)
    model.train()
    eager_out, eager_grads = _train_step(model, x)
    out, grads = _train_step(torch.compile(model, fullgraph=True), x)
    # inductor reassociates the BatchNorm statistics' sums: float32 rounding, amplified by
    # the batch statistics of two images
    _assert_same(eager_out, out, atol=1e-3)
    # gradients that vanish in exact arithmetic (a conv bias before a training-mode BN) are
    # rounding noise either way: compare against the scale of all gradients
    scale = max(float(g.abs().max()) for g in eager_grads.values())
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f'{name}: {m}')
    flat = torch.cat([g.flatten() for g in eager_grads.values()])
    flat_compiled = torch.cat([grads[n].flatten() for n in eager_grads])
    assert (flat_compiled - flat).norm() <= 1e-3 * flat.norm()


@pytest.fixture(name='triton_interpreter')
def _triton_interpreter():
    """Triton's interpreter for the kernels; None without Triton."""
    try:
        import triton  # noqa: F401
    except ImportError:
        yield None
        return
    from triton_checks import triton_interpreter
    with triton_interpreter():
        yield True
