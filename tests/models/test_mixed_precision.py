"""MobileMamba under ``torch.autocast`` on CPU: bfloat16, and float16 standing in for CUDA's.

The selective scan (its exp, softplus and recurrence) runs in float32 whatever the autocast
dtype; the backbone's outputs stay close to float32 and finite, and so do its gradients and a
short training run of a detector.
"""
import copy
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmmobilemamba.models import MobileMamba

REPO = Path(__file__).resolve().parents[2]
DTYPES = [torch.bfloat16, torch.float16]


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope='module')
def b1():
    torch.manual_seed(0)
    model = MobileMamba('b1', drop_path_rate=0.0).eval()
    with torch.no_grad():  # BN statistics and affines as after training: no identity branches
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_b1_forward_and_backward_under_autocast(b1, dtype):
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = b1(x)
    b1.zero_grad()
    inputs = x.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=dtype):
        outs = b1(inputs)
    assert any(o.dtype == dtype for o in outs)  # autocast is on
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert _relative_l2(out, ref) < 0.03
    sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    assert torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0
    grads = [p.grad for p in b1.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


class _DtypeRecorder(TorchDispatchMode):
    """Records ``(op, dtypes of its floating outputs)`` of everything that runs inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None and not r.alias_info.is_write
               for r in func._schema.returns):
            return out  # a view of an input computes nothing
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        dtypes = [t.dtype for t in outputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
        self.calls.append((str(func), dtypes))
        return out


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_the_scan_computes_in_float32_under_autocast(monkeypatch, dtype):
    """CPU path (channels-last): inside SS2D's scan every op yields float32 but the last, which
    casts the result back."""
    from mmmobilemamba.models.layers import SS2D, ss2d
    original = ss2d.selective_scan_channels_last
    recorded = []

    def recording_scan(u, *args, **kwargs):
        with _DtypeRecorder() as recorder:
            out = original(u, *args, **kwargs)
        recorded.append((u.dtype, out.dtype, recorder.calls))
        return out

    monkeypatch.setattr(ss2d, 'selective_scan_channels_last', recording_scan)
    module = SS2D(16).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        module(torch.randn(1, 16, 6, 7).contiguous(memory_format=torch.channels_last))
    assert len(recorded) == 1  # one scan, both directions
    for input_dtype, output_dtype, calls in recorded:
        assert input_dtype == dtype and output_dtype == dtype  # low precision around it
        ops = [name for name, _ in calls]
        assert any('exp' in op for op in ops) and any('softplus' in op for op in ops)
        inside = [d for _, dtypes in calls[:-1] for d in dtypes]
        assert inside and all(d == torch.float32 for d in inside), calls
        assert calls[-1][1] == [dtype]  # the result, cast back


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_the_fused_scan_reads_low_precision_and_computes_float32(monkeypatch, dtype):
    """CUDA's path (NCHW): SS2D's scan op reads the low-precision projections as they are (no
    cast before it) and every op inside it yields float32; so does its result, which the
    gated LayerNorm takes as it is."""
    from mmmobilemamba.models.layers import SS2D
    from mmmobilemamba.ops import scan_torch
    original = scan_torch.ss2d_scan_forward_torch
    recorded = []

    def recording_scan(u, *args):
        with _DtypeRecorder() as recorder:
            out = original(u, *args)
        recorded.append((u.dtype, out.dtype, recorder.calls))
        return out

    monkeypatch.setattr(scan_torch, 'ss2d_scan_forward_torch', recording_scan)
    module = SS2D(16).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        module(torch.randn(1, 16, 6, 7))
    assert len(recorded) == 1  # one scan, both directions
    input_dtype, output_dtype, calls = recorded[0]
    assert input_dtype == dtype and output_dtype == torch.float32
    ops = [name for name, _ in calls]
    assert any('exp' in op for op in ops) and any('softplus' in op for op in ops)
    inside = [d for _, dtypes in calls for d in dtypes]
    assert inside and all(d == torch.float32 for d in inside), calls


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_quickstart_retinanet_trains_20_iterations_under_autocast(tmp_path, dtype):
    pytest.importorskip('mmdet')
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    from mmengine.runner import Runner

    from mmmobilemamba.datasets.synthetic import generate_coco_shapes
    from mmmobilemamba.engine.config import get_registry

    class AutocastOptimWrapper(OptimWrapper):
        """What mmengine's AmpOptimWrapper does on a GPU, on the CPU: autocast forward."""

        def optim_context(self, model):
            context = super().optim_context(model)
            autocast = torch.autocast('cpu', dtype=dtype)

            class Both:
                def __enter__(self):
                    context.__enter__()
                    autocast.__enter__()

                def __exit__(self, *exc):
                    autocast.__exit__(*exc)
                    return context.__exit__(*exc)
            return Both()

    register_all_modules(init_default_scope=True)
    root = generate_coco_shapes(tmp_path / 'coco', num_train=8, num_val=1, image_size=64)['root']
    cfg = Config.fromfile(str(REPO / 'configs/quickstart/retinanet_mobilemamba_demo-coco.py'))
    loader = copy.deepcopy(cfg.train_dataloader)
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader.dataset.data_root = str(root)
    for step in loader.dataset.pipeline:
        if step.type in ('Resize', 'RandomResize'):
            step.scale = (128, 128)
        elif step.type == 'RandomCrop':
            step.crop_size = (128, 128)
    torch.manual_seed(0)
    model = get_registry('mmdet', 'MODELS').build(cfg.model)
    model.init_weights()
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    wrapper = AutocastOptimWrapper(wrapper.optimizer, clip_grad=cfg.optim_wrapper.get('clip_grad'))
    batches = Runner.build_dataloader(loader)
    done = 0
    while done < 20:
        for batch in batches:
            losses = model.train_step(batch, wrapper)
            assert all(torch.isfinite(v).all() for v in losses.values()), (done, losses)
            done += 1
            if done == 20:
                break
