"""Segmentation configs: the paper's ADE20K settings, their short names and the quickstarts.

Every config loads and builds through mmseg's registry; the full models have the paper's
parameter counts without the auxiliary head (within 2%) and their heads fit the backbone's
stages; the quickstart segmentors take a training step, predict and evaluate on a tiny
generated shapes set.
"""
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.evaluator import Evaluator  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmmobilemamba.datasets.synthetic import (SEG_CLASSES, SEG_PALETTE,  # noqa: E402
                                              generate_ade_shapes)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs'

FPN = 'mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py'
DEEPLABV3 = 'mobilemamba/deeplabv3_mobilemamba-b4_4xb8-80k_ade20k-512x512.py'
PSPNET = 'mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py'
# parameters in millions reported by the paper (150 ADE20K classes, no auxiliary head)
PAPER_PARAMS = {FPN: 19.8, DEEPLABV3: 23.0, PSPNET: 20.5}
SHORT_NAMES = {
    'fpn_mobilemamba.py': FPN,
    'deeplabv3_mobilemamba.py': DEEPLABV3,
    'pspnet_mobilemamba.py': PSPNET,
}
QUICKSTART = [
    'quickstart/fpn_mobilemamba_demo-ade.py',
    'quickstart/deeplabv3_mobilemamba_demo-ade.py',
    'quickstart/pspnet_mobilemamba_demo-ade.py',
]
ALL_CONFIGS = list(PAPER_PARAMS) + list(SHORT_NAMES) + QUICKSTART


@pytest.fixture(scope='module', autouse=True)
def mmseg_scope():
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope('mmseg')


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / name))


def build_model(model_cfg):
    from mmseg.registry import MODELS
    return MODELS.build(model_cfg)


@functools.lru_cache(maxsize=None)
def _built(name: str):
    return build_model(load(name).model)


def build(name: str):
    """The model of a config, built once per session (callers must not modify it)."""
    return _built(name)


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def params_without_aux(model) -> int:
    aux = getattr(model, 'auxiliary_head', None)
    return num_params(model) - (num_params(aux) if aux is not None else 0)


# ------------------------------------------------------------------------------ every config
@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_loads_and_builds(name):
    cfg = load(name)
    assert cfg.custom_imports == dict(imports=['mmmobilemamba'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmseg'
    model = build(name)
    assert type(model).__name__ == 'EncoderDecoder'
    assert type(model.backbone).__name__ == 'MobileMamba'
    assert num_params(model) > 0


# ------------------------------------------------------------------------------ full configs
@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_param_count_matches_paper(name):
    millions = params_without_aux(build(name)) / 1e6
    paper = PAPER_PARAMS[name]
    assert abs(millions - paper) / paper < 0.02, f'{name}: {millions:.2f}M vs paper {paper}M'


@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_full_configs_use_the_released_b4_weights(name):
    """The ResNet bases are fully replaced (the authors' settings, test time and training, are
    compared entry by entry in test_official_settings.py)."""
    cfg = load(name)
    assert cfg.pretrained == 'weights/MobileMamba_B4/mobilemamba_b4.pth'
    assert cfg.model.pretrained is None  # the ResNet base's URL must not reach the backbone
    backbone = cfg.model.backbone
    assert backbone.type == 'MobileMamba' and backbone.arch == 'b4'
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=cfg.pretrained)
    assert 'depth' not in backbone  # nothing of the ResNet base survives the replacement


def test_fpn_head_layout():
    cfg = load(FPN).model
    assert cfg.neck.in_channels == [200, 376, 448]
    assert (cfg.neck.out_channels, cfg.neck.num_outs) == (256, 3)
    head = cfg.decode_head
    assert head.type == 'FPNHead'
    assert head.in_index == [0, 1, 2] and head.feature_strides == [16, 32, 64]
    assert head.channels == 128
    assert 'auxiliary_head' not in cfg or not cfg.auxiliary_head


@pytest.mark.parametrize('name,head_type', [(DEEPLABV3, 'ASPPHead'), (PSPNET, 'PSPHead')])
def test_context_heads_on_last_stage_aux_on_stage_1(name, head_type):
    cfg = load(name).model
    head, aux = cfg.decode_head, cfg.auxiliary_head
    assert (head.type, head.in_index, head.in_channels, head.channels) == (head_type, 2, 448, 256)
    assert (aux.type, aux.in_index, aux.in_channels) == ('FCNHead', 1, 376)
    assert aux.loss_decode.loss_weight == pytest.approx(0.4)
    if head_type == 'ASPPHead':
        assert tuple(head.dilations) == (1, 12, 24, 36)
    else:
        assert 'dilations' not in head


@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_full_models_run(name):
    """The heads fit the stages: logits at the input size, also from the auxiliary head."""
    model = build(name)
    model.eval()
    size = 128
    metas = [dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))]
    with torch.no_grad():
        logits = model.encode_decode(torch.randn(1, 3, size, size), metas)
        assert logits.shape == (1, 150, size, size)
        if getattr(model, 'auxiliary_head', None) is not None:
            aux = model.auxiliary_head(model.extract_feat(torch.randn(1, 3, size, size)))
            assert aux.shape[:2] == (1, 150)


# ------------------------------------------------------------------------------ short names
@pytest.mark.parametrize('short,full', list(SHORT_NAMES.items()))
def test_short_name_is_the_full_config(short, full):
    text = (CONFIGS / short).read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.startswith('#')]
    assert code == [f"_base_ = ['./{full}']"]  # a thin child: inherits, changes nothing
    short_cfg, full_cfg = load(short).to_dict(), load(full).to_dict()
    short_cfg.pop('_base_', None)
    assert short_cfg == full_cfg
    short_model, full_model = build(short), build(full)
    assert num_params(short_model) == num_params(full_model)
    assert [(k, v.shape) for k, v in short_model.state_dict().items()] == \
        [(k, v.shape) for k, v in full_model.state_dict().items()]


# ------------------------------------------------------------------------------ pretrained
def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    missing = tmp_path / 'nowhere' / 'mobilemamba_b4.pth'
    cfg = load('fpn_mobilemamba.py')
    cfg.model.backbone.init_cfg.checkpoint = str(missing)
    model = build_model(cfg.model)
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
        assert dataset.type == 'BaseSegDataset'
        assert dataset.data_root == 'data/demo_ade'
        assert (dataset.img_suffix, dataset.seg_map_suffix) == ('.jpg', '.png')
        assert dataset.reduce_zero_label is True
        # written out in the config; must stay equal to the package's
        assert tuple(dataset.metainfo.classes) == SEG_CLASSES
        assert [tuple(c) for c in dataset.metainfo.palette] == [tuple(c) for c in SEG_PALETTE]
        assert dataset.pipeline[0].type == 'LoadImageFromFile'  # the name inferencers need
    assert cfg.train_dataloader.dataset.pipeline[0].on_error == 'skip'
    assert 'on_error' not in cfg.val_dataloader.dataset.pipeline[0]  # the loader raises
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize']
    assert resize and max(resize[0].scale) <= 256
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert 0 < cfg.train_cfg.val_interval <= cfg.train_cfg.max_iters <= 2000
    assert cfg.val_evaluator.type == 'IoUMetric' and cfg.val_evaluator.iou_metrics == ['mIoU']
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert [h.type for h in cfg.custom_hooks] == ['FiniteLossGuardHook']
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    model = build(name)
    assert model.decode_head.num_classes == len(SEG_CLASSES)
    if getattr(model, 'auxiliary_head', None) is not None:
        assert model.auxiliary_head.num_classes == len(SEG_CLASSES)
    assert num_params(model) < 5e6  # small enough for a CPU


@pytest.fixture(scope='module')
def tiny_ade(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade_shapes')
    generate_ade_shapes(root, num_train=4, num_val=2, image_size=64)
    return root


def tiny_options(cfg: Config, root: Path, size: int = 64) -> dict:
    """``--cfg-options`` for the tiny set at ``size`` px, 2 images per batch, no workers."""
    options = {}
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options.update({f'{key}.batch_size': 2, f'{key}.num_workers': 0,
                        f'{key}.persistent_workers': False,
                        f'{key}.dataset.data_root': str(root)})
        for i, transform in enumerate(cfg[key].dataset.pipeline):
            prefix = f'{key}.dataset.pipeline.{i}'
            if transform.type == 'Resize':
                options[f'{prefix}.scale'] = (size, size)
            if transform.type == 'RandomResize':  # never below the crop (ratios down to 0.8)
                options[f'{prefix}.scale'] = (size * 5 // 4, size * 5 // 4)
            if transform.type == 'RandomCrop':
                options[f'{prefix}.crop_size'] = (size, size)
    return options


def on_tiny_data(name: str, root: Path) -> Config:
    cfg = load(name)
    cfg.merge_from_dict(tiny_options(cfg, root))
    return cfg


@pytest.mark.parametrize('name', QUICKSTART)
def test_quickstart_trains_and_predicts(name, tiny_ade):
    torch.manual_seed(0)
    cfg = on_tiny_data(name, tiny_ade)
    assert cfg.train_dataloader.dataset.data_root == str(tiny_ade)
    model = build_model(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    train_loader = Runner.build_dataloader(cfg.train_dataloader)
    labels = set()
    for index in range(len(train_loader.dataset)):
        labels |= set(train_loader.dataset[index]['data_samples'].gt_sem_seg.data.unique().tolist())
    # on disk 0 = ignore, 1..7 = classes: read back as 255 and 0..6
    assert labels <= set(range(len(SEG_CLASSES))) | {255} and 255 in labels, labels

    train_batch = next(iter(train_loader))
    assert train_batch['inputs'][0].shape[-2:] == (64, 64)
    model.train()
    before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    losses = model.train_step(train_batch, optim_wrapper)
    assert 'decode.loss_ce' in losses
    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
    changed = [k for k, v in model.decode_head.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed  # the step updated the head

    model.eval()
    evaluator = Evaluator(cfg.val_evaluator)
    val_loader = Runner.build_dataloader(cfg.val_dataloader)
    evaluator.dataset_meta = val_loader.dataset.metainfo
    for batch in val_loader:
        with torch.no_grad():
            outputs = model.test_step(batch)
        for sample in outputs:
            pred = sample.pred_sem_seg.data
            assert pred.shape[-2:] == sample.gt_sem_seg.data.shape[-2:] == (64, 64)
            assert int(pred.min()) >= 0 and int(pred.max()) < len(SEG_CLASSES)
        evaluator.process(outputs, batch)
    results = evaluator.evaluate(len(val_loader.dataset))
    assert 0.0 <= results['mIoU'] <= 100.0 and 0.0 <= results['aAcc'] <= 100.0


def test_quickstart_runs_in_the_runner(tiny_ade, tmp_path):
    """Runner.from_cfg as tools/train.py builds it: one iteration, a checkpoint, a validation."""
    cfg = on_tiny_data(QUICKSTART[0], tiny_ade)
    cfg.merge_from_dict({'train_cfg.max_iters': 1, 'train_cfg.val_interval': 1,
                         'default_hooks.checkpoint.interval': 1,
                         'param_scheduler': [dict(type='ConstantLR', factor=1.0,
                                                  by_epoch=False)]})
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'seg_runner_{tmp_path.name}'
    # the visualizer is a process-wide named instance: a fresh name gives this run its own
    # save_dir whatever ran before in the same process
    cfg.visualizer.name = f'seg_runner_vis_{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert (tmp_path / 'work' / 'iter_1.pth').is_file()
    scalars = (tmp_path / 'work').glob('*/vis_data/scalars.json')
    text = ''.join(p.read_text() for p in scalars)
    assert '"mIoU"' in text and '"aAcc"' in text


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_quickstart_train_then_test_tools(tiny_ade, tmp_path):
    """tools/train.py then tools/test.py on the FPN quickstart (a few iterations)."""
    name = QUICKSTART[0]
    options = [f'{k}={v}' for k, v in tiny_options(load(name), tiny_ade).items()]
    options = [o.replace(' ', '') for o in options]
    options += ['train_cfg.max_iters=4', 'train_cfg.val_interval=2',
                'default_hooks.checkpoint.interval=2']
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(tool, *args):
        proc = subprocess.run([sys.executable, str(REPO / 'tools' / tool), str(CONFIGS / name),
                               *map(str, args)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run('train.py', '--work-dir', work_dir, '--cfg-options', *options)
    for it in (2, 4):
        assert (work_dir / f'iter_{it}.pth').is_file()
    log = run('test.py', work_dir / 'iter_4.pth', '--work-dir', work_dir,
              '--cfg-options', *options)
    assert 'mIoU' in log and 'aAcc' in log
    line = [ln for ln in log.splitlines() if 'aAcc:' in ln and 'mIoU:' in ln][-1]
    miou = float(line.split('mIoU:')[1].split()[0])
    assert 0.0 <= miou <= 100.0
