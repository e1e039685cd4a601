"""The quickstart detectors and segmentor train on CUDA: one optimiser step of the model a
config builds, on a synthetic batch, with finite losses and gradients that reach the whole
backbone. (``tools/train.py --amp`` on CUDA: tests/tools/test_train_test_tools.py.)"""
import importlib
from pathlib import Path

import pytest
import torch
from cuda_checks import CUDA_ONLY, DEVICE, needs_mmcv_cuda_ops

from mmmobilemamba.engine.config import detect_codebase, get_registry, load_config

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

pytestmark = CUDA_ONLY
CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'quickstart'


def _batch(codebase: str, size: int = 64, batch_size: int = 2) -> dict:
    """A dataloader batch of random uint8 images with one box (mmdet) or a label map (mmseg)."""
    g = torch.Generator().manual_seed(0)
    meta = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                scale_factor=(1.0, 1.0), flip=False)
    samples = []
    for i in range(batch_size):
        if codebase == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmengine.structures import InstanceData
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[8.0, 6.0, 44.0, 40.0 + 8 * i]]), labels=torch.tensor([i]))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            labels = torch.randint(0, 7, (1, size, size), generator=g)
            labels[:, :4] = 255  # some ignored pixels
            sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
              for _ in range(batch_size)]
    return dict(inputs=images, data_samples=samples)


@pytest.mark.parametrize('name', [
    pytest.param('retinanet_mobilemamba_demo-coco.py', marks=needs_mmcv_cuda_ops),  # focal loss
    'ssdlite_mobilemamba_demo-coco.py',
    'fpn_mobilemamba_demo-ade.py',
])
def test_quickstart_model_trains_one_step_on_cuda(name):
    """``train_step`` on CUDA with the config's optimiser: finite losses, a finite gradient
    for every backbone parameter (not all zero), and updated, finite backbone weights."""
    cfg = load_config(CONFIGS / name)
    codebase = detect_codebase(cfg)
    importlib.import_module(f'{codebase}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(codebase):
        torch.manual_seed(0)
        model = get_registry(codebase, 'MODELS').build(cfg.model)
        model.init_weights()
        model = model.to(DEVICE).train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        grads = {}
        step = optim_wrapper.step

        def record_then_step(**kwargs):  # the gradients, before clipping and the update
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()
                          if p.grad is not None})
            step(**kwargs)

        optim_wrapper.step = record_then_step
        before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        losses = model.train_step(_batch(codebase), optim_wrapper)

    assert losses and all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values()), \
        losses
    backbone = {f'backbone.{n}' for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert backbone and backbone <= set(grads), sorted(backbone - set(grads))[:5]
    assert all(g.device.type == DEVICE.type and torch.isfinite(g).all() for g in grads.values())
    assert sum(float(grads[n].abs().sum()) for n in backbone) > 0
    after = dict(model.backbone.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(after[n], before[n]) for n in before)
