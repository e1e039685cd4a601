"""Detection configs: the paper's COCO settings, their short names and the quickstarts.

Every config loads and builds through mmdet's registry; the full models have the paper's
parameter counts (within 2%) and pyramids that fit their anchors; the quickstart detectors
take a training step and predict on a tiny generated shapes set.
"""
import copy
import functools
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmengine.evaluator import Evaluator  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmmobilemamba.datasets.synthetic import (DEMO_CLASSES, DEMO_PALETTE,  # noqa: E402
                                              generate_coco_shapes)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs'

RETINANET = 'mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py'
MASK_RCNN = 'mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py'
SSDLITE_320 = 'mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py'
SSDLITE_512 = 'mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-512.py'
# parameters in millions reported by the paper (80 COCO classes); SSDLite's 18.0M count the
# backbone stage it never reads, which is not built here (exact counts against the released
# models: tests/models/test_official_models.py)
PAPER_PARAMS = {RETINANET: 27.1, MASK_RCNN: 38.0}
PAPER_CONFIGS = [RETINANET, MASK_RCNN, SSDLITE_320, SSDLITE_512]
SHORT_NAMES = {
    'retinanet_mobilemamba.py': RETINANET,
    'mask_rcnn_mobilemamba.py': MASK_RCNN,
    'ssdlite_mobilemamba.py': SSDLITE_320,
}
QUICKSTART = [
    'quickstart/retinanet_mobilemamba_demo-coco.py',
    'quickstart/mask-rcnn_mobilemamba_demo-coco.py',
    'quickstart/ssdlite_mobilemamba_demo-coco.py',
]
ALL_CONFIGS = PAPER_CONFIGS + list(SHORT_NAMES) + QUICKSTART


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / name))


@functools.lru_cache(maxsize=None)
def _built(name: str):
    from mmdet.registry import MODELS
    return MODELS.build(load(name).model)


def build(name: str):
    """The model of a config, built once per session (callers must not modify it)."""
    return _built(name)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ every config
@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_loads_and_builds(name):
    cfg = load(name)
    assert cfg.custom_imports['imports'] == ['mmmobilemamba']
    model = build(name)
    assert type(model.backbone).__name__ == 'MobileMamba'
    assert num_params(model) > 0


# ------------------------------------------------------------------------------ full configs
@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_param_count_matches_paper(name):
    millions = num_params(build(name)) / 1e6
    paper = PAPER_PARAMS[name]
    assert abs(millions - paper) / paper < 0.02, f'{name}: {millions:.2f}M vs paper {paper}M'


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_full_configs_use_the_released_b1_weights(name):
    cfg = load(name)
    assert cfg.pretrained == 'weights/MobileMamba_B1/mobilemamba_b1.pth'
    backbone = cfg.model.backbone
    assert backbone.arch == 'b1'
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=cfg.pretrained)


@pytest.mark.parametrize('name', [SSDLITE_320, SSDLITE_512])
def test_ssdlite_trains_every_parameter_without_an_unused_parameter_search(name):
    """Stages 0-1 only: the backbone has no stage 2, every parameter gets a gradient, so DDP
    needs no find_unused_parameters (tests/tools/test_dist.py trains it with 2 processes)."""
    cfg = load(name)
    assert 'find_unused_parameters' not in cfg and 'model_wrapper_cfg' not in cfg
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    model = MODELS.build(cfg.model)
    assert len(model.backbone.stages) == 2
    model.train()
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[8., 8., 40., 48.]]),
                                       labels=torch.tensor([3]))
    losses = model.loss(torch.randn(2, 3, 64, 64), [sample, copy.deepcopy(sample)])
    sum(v if torch.is_tensor(v) else sum(v) for v in losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize('name', [RETINANET, MASK_RCNN])
def test_fpn_strides_fit_anchors_and_rois(name):
    cfg = load(name)
    neck = build(name).neck
    strides = neck.output_strides((16, 32, 64))
    if name == RETINANET:
        assert strides == [8, 16, 32, 64, 128]
        assert strides == cfg.model.bbox_head.anchor_generator.strides
    else:
        assert strides == [4, 8, 16, 32, 64]
        assert strides == cfg.model.rpn_head.anchor_generator.strides
        assert strides[:4] == cfg.model.roi_head.bbox_roi_extractor.featmap_strides
        assert strides[:4] == cfg.model.roi_head.mask_roi_extractor.featmap_strides


def test_ssdlite_320_maps_fit_anchor_strides():
    cfg = load(SSDLITE_320)
    model = build(SSDLITE_320)
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 320, 320))
    strides = cfg.model.bbox_head.anchor_generator.strides
    assert [f.shape[1] for f in feats] == list(cfg.model.bbox_head.in_channels)
    assert len(feats) == len(strides)
    for feat, stride in zip(feats, strides):
        cells = feat.shape[-1]
        # the map tiles the image: cells * stride == size, up to rounding of the stride
        assert abs(cells * stride - 320) < stride / 2 + 1, (cells, stride)


def test_ssdlite_512_keeps_the_320_anchors_its_released_model_was_trained_with():
    anchors_320 = load(SSDLITE_320).model.bbox_head.anchor_generator
    anchors_512 = load(SSDLITE_512).model.bbox_head.anchor_generator
    assert anchors_512 == anchors_320
    resize = [t for t in load(SSDLITE_512).train_dataloader.dataset.dataset.pipeline
              if t.type == 'Resize']
    assert tuple(resize[0].scale) == (512, 512)


# ------------------------------------------------------------------------------ short names
@pytest.mark.parametrize('short,full', list(SHORT_NAMES.items()))
def test_short_name_is_the_full_config(short, full):
    text = (CONFIGS / short).read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.startswith('#')]
    assert code == [f"_base_ = './{full}'"]  # a thin child: inherits, changes nothing
    short_cfg, full_cfg = load(short).to_dict(), load(full).to_dict()
    short_cfg.pop('_base_', None)
    assert short_cfg == full_cfg
    assert num_params(build(short)) == num_params(build(full))


# ------------------------------------------------------------------------------ pretrained
def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    from mmdet.registry import MODELS
    missing = tmp_path / 'nowhere' / 'mobilemamba_b1.pth'
    cfg = load('retinanet_mobilemamba.py')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(missing))
    model = MODELS.build(cfg.model)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    message = str(err.value)
    assert str(missing) in message
    assert 'mobilemamba_official.py' in message


# ------------------------------------------------------------------------------ quickstart
@pytest.mark.parametrize('name', QUICKSTART)
def test_quickstart_settings(name):
    cfg = load(name)
    assert cfg.pretrained is None
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=None)
    assert cfg.work_dir == 'work_dirs/' + Path(name).stem
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dataset = loader.dataset
        assert tuple(dataset.metainfo.classes) == DEMO_CLASSES
        assert [tuple(c) for c in dataset.metainfo.palette] == [tuple(c) for c in DEMO_PALETTE]
        assert dataset.data_root == 'data/demo_coco/'
        assert dataset.pipeline[0].type == 'LoadImageFromFile'  # the name inferencers need
    assert cfg.train_dataloader.dataset.pipeline[0].on_error == 'skip'
    assert 'on_error' not in cfg.val_dataloader.dataset.pipeline[0]  # the loader raises
    assert cfg.train_dataloader.batch_size in (8, 16)
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert [h.type for h in cfg.custom_hooks] == ['FiniteLossGuardHook']
    assert cfg.default_hooks.logger.interval <= 10
    metrics = cfg.val_evaluator.metric
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    assert metrics == (['bbox', 'segm'] if 'mask-rcnn' in name else ['bbox'])
    model = build(name)
    head = model.roi_head.bbox_head if hasattr(model, 'roi_head') else model.bbox_head
    assert head.num_classes == len(DEMO_CLASSES)


@pytest.fixture(scope='module')
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('det_shapes')
    generate_coco_shapes(root, num_train=4, num_val=2, image_size=64)
    return root


def on_tiny_data(cfg: Config, root: Path, size: int = 64) -> Config:
    """``cfg`` reading the tiny set at ``size`` px, 2 images per batch, no worker processes,
    every detection kept."""
    cfg = copy.deepcopy(cfg)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.batch_size = 2
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = str(root)
        for transform in loader.dataset.pipeline:
            if transform.type in ('Resize', 'RandomResize'):
                transform.scale = (size, size)
            elif transform.type == 'RandomCrop':
                transform.crop_size = (size, size)
    cfg.val_evaluator.ann_file = str(root / 'annotations' / 'instances_val.json')
    # an untrained model scores everything low: keep every detection so that the COCO
    # evaluation has results to score
    test_cfg = cfg.model.test_cfg
    (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.0
    return cfg


@pytest.mark.parametrize('name', QUICKSTART)
def test_quickstart_trains_and_predicts(name, tiny_shapes):
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    cfg = on_tiny_data(load(name), tiny_shapes)
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    train_batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    model.train()
    losses = model.train_step(train_batch, optim_wrapper)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values()), losses

    model.eval()
    evaluator = Evaluator(cfg.val_evaluator)
    val_loader = Runner.build_dataloader(cfg.val_dataloader)
    evaluator.dataset_meta = val_loader.dataset.metainfo
    for batch in val_loader:
        with torch.no_grad():
            outputs = model.test_step(batch)
        for sample in outputs:
            pred = sample.pred_instances
            assert pred.bboxes.shape[-1] == 4 and len(pred.bboxes) == len(pred.scores)
            if 'mask-rcnn' in name:
                assert 'masks' in pred
        evaluator.process(outputs, batch)
    results = evaluator.evaluate(len(val_loader.dataset))
    assert 0.0 <= results['coco/bbox_mAP'] <= 1.0
    if 'mask-rcnn' in name:
        assert 'coco/segm_mAP' in results
