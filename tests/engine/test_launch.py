"""tools/train.py and tools/test.py entry points: pre-flight checks, backbone init under
load_from, safe image loading and exit codes, with the runner replaced (nothing is trained)."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmmobilemamba.engine import ImageLoadError, NonFiniteLossError, launch
from mmmobilemamba.engine.launch import (LaunchError, apply_safe_image_loading,
                                         check_checkpoint_files, run_preflight_checks,
                                         skip_backbone_pretrained, train_main)

REPO = Path(__file__).resolve().parents[2]

TINY = dict(embed_dims=(48, 64, 96), depths=(1, 1, 1), global_ratios=(0.8, 0.7, 0.6),
            local_ratios=(0.2, 0.2, 0.3), kernel_sizes=(7, 5, 3))


def _cfg(root, num_classes=2, **backbone):
    """A RetinaNet on a tiny MobileMamba reading ``root/ann.json`` and ``root/img/``."""
    dataset = dict(type='CocoDataset', data_root=str(root), ann_file='ann.json',
                   data_prefix=dict(img='img/'), metainfo=dict(classes=('cat', 'dog')),
                   pipeline=[dict(type='LoadImageFromFile'), dict(type='PackDetInputs')])
    return Config(dict(
        custom_imports=dict(imports=['mmmobilemamba'], allow_failed_imports=False),
        default_scope='mmdet',
        model=dict(type='RetinaNet',
                   backbone=dict(dict(type='MobileMamba', arch=TINY), **backbone),
                   neck=dict(type='MobileMambaFPN', in_channels=[48, 64, 96], out_channels=16,
                             num_outs=3),
                   bbox_head=dict(type='RetinaHead', num_classes=num_classes, in_channels=16)),
        train_dataloader=dict(dataset=dataset),
        val_dataloader=dict(dataset=dict(dataset, test_mode=True)),
        test_dataloader=dict(dataset=dict(dataset, test_mode=True))))


def _write_data(root):
    (root / 'img').mkdir()
    (root / 'ann.json').write_text('{}')  # only its existence is checked before the run
    return root


def _imagenet(path):
    return dict(init_cfg=dict(type='Pretrained', checkpoint=str(path)))


def _write(cfg, path):
    cfg.dump(str(path))
    return str(path)


class _Runner:
    """Stands in for mmengine's Runner: ``train``/``test`` raise ``error`` if given."""

    def __init__(self, cfg, error=None):
        self.cfg, self.error = cfg, error

    def train(self):
        if self.error:
            raise self.error

    def test(self):
        if self.error:
            raise self.error
        return {'coco/bbox_mAP': 0.5}


@pytest.fixture
def runners(monkeypatch):
    """``launch.build_runner`` records the configs it is given and returns a :class:`_Runner`
    raising ``runners.error``."""
    monkeypatch.setenv('LOCAL_RANK', '0')  # train_main/test_main set it when missing

    class Built(list):
        error = None
    built = Built()

    def build(cfg):
        built.append(cfg)
        return _Runner(cfg, built.error)
    monkeypatch.setattr(launch, 'build_runner', build)
    return built


# ------------------------------------------------------------------------------- pre-flight
def test_preflight_lists_every_error_in_one_message(tmp_path):
    cfg = _cfg(tmp_path, num_classes=80, frozen_stage=1, **_imagenet(tmp_path / 'in1k.pth'))
    cfg.load_from = str(tmp_path / 'coco.pth')
    with pytest.raises(LaunchError) as info:
        run_preflight_checks(cfg, ('train', 'val'), training=True)
    message = str(info.value)
    assert message.startswith('6 problem(s) in the config, nothing was run:')
    for key in ('model.bbox_head.num_classes', 'train_dataloader.dataset.ann_file',
                'train_dataloader.dataset.data_prefix.img', 'model.backbone.frozen_stage',
                'load_from', 'model.backbone.init_cfg.checkpoint'):
        assert f'[ERROR] {key}: ' in message, key
    assert "did you mean 'frozen_stages'?" in message
    assert 'model = dict(backbone=dict(init_cfg=None))' in message


def test_preflight_passes_on_a_consistent_config(tmp_path):
    run_preflight_checks(_cfg(_write_data(tmp_path)), ('train', 'val'), training=True)


def test_checkpoints_are_only_checked_for_training(tmp_path):
    cfg = _cfg(_write_data(tmp_path), **_imagenet(tmp_path / 'in1k.pth'))
    cfg.load_from = str(tmp_path / 'coco.pth')
    run_preflight_checks(cfg, ('test',), training=False)
    with pytest.raises(LaunchError, match=r'2 problem\(s\)'):
        run_preflight_checks(cfg, ('test',), training=True)


@pytest.mark.parametrize('resume,sources', [(False, ['load_from']), (True, [])])
def test_missing_load_from_is_fine_when_resuming(tmp_path, resume, sources):
    cfg = Config(dict(load_from=str(tmp_path / 'missing.pth'), resume=resume))
    assert [p.source for p in check_checkpoint_files(cfg)] == sources


def test_pretrained_variable_of_a_child_config_is_reported(tmp_path):
    """The base built its model dict with its own ``pretrained``: the child's never gets there."""
    weights = tmp_path / 'in1k.pth'
    torch.save({}, weights)
    (tmp_path / 'base.py').write_text(
        "pretrained = None\n"
        "model = dict(backbone=dict(type='MobileMamba', "
        "init_cfg=dict(type='Pretrained', checkpoint=pretrained)))\n")
    (tmp_path / 'child.py').write_text(f"_base_ = './base.py'\npretrained = {str(weights)!r}\n")
    problems = check_checkpoint_files(Config.fromfile(str(tmp_path / 'child.py')))
    assert [p.source for p in problems] == ['pretrained']
    assert f"is {str(weights)!r} but the backbone loads None" in problems[0].message
    (tmp_path / 'child.py').write_text(
        f"_base_ = './base.py'\npretrained = {str(weights)!r}\n"
        "model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))\n")
    assert check_checkpoint_files(Config.fromfile(str(tmp_path / 'child.py'))) == []


# ------------------------------------------------------------ backbone init under load_from
@pytest.mark.parametrize('saved,skipped', [
    ({'state_dict': {'backbone.stem.weight': torch.zeros(1)}}, True),
    ({'backbone.stem.weight': torch.zeros(1)}, True),
    ({'state_dict': {'neck.conv.weight': torch.zeros(1)}}, False),
    (None, False),  # load_from names a missing file
    ('no load_from', False),
])
def test_backbone_imagenet_init_is_skipped_when_load_from_has_backbone_weights(
        tmp_path, saved, skipped):
    cfg = _cfg(tmp_path, **_imagenet(tmp_path / 'in1k.pth'))
    if saved != 'no load_from':
        cfg.load_from = str(tmp_path / 'coco.pth')
    if isinstance(saved, dict):
        torch.save(saved, tmp_path / 'coco.pth')
    skip_backbone_pretrained(cfg)
    if skipped:
        assert cfg.model.backbone.init_cfg is None
    else:
        assert cfg.model.backbone.init_cfg.checkpoint == str(tmp_path / 'in1k.pth')


# --------------------------------------------------------------------- safe image loading
def test_safe_image_loading_per_split_through_dataset_wrappers():
    def pipeline(*loaders):
        return [*loaders, dict(type='PackDetInputs')]
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2, dataset=dict(
            type='CocoDataset', pipeline=pipeline(
                dict(type='LoadImageFromFile', ignore_empty=True, to_float32=True))))),
        val_dataloader=dict(dataset=dict(type='ConcatDataset', datasets=[
            dict(type='CocoDataset', pipeline=pipeline(dict(type='mmcv.LoadImageFromFile'))),
            dict(type='CocoDataset', pipeline=pipeline(
                dict(type='SafeLoadImageFromFile', on_error='skip')))])),
        test_dataloader=dict(dataset=dict(type='CocoDataset', pipeline=pipeline(
            dict(type='LoadImageFromFile'))))))
    apply_safe_image_loading(cfg, ('train', 'val', 'test'))
    assert cfg.train_dataloader.dataset.dataset.pipeline[0] == dict(
        type='SafeLoadImageFromFile', to_float32=True, on_error='skip')
    val = cfg.val_dataloader.dataset.datasets
    assert val[0].pipeline[0] == dict(type='SafeLoadImageFromFile', on_error='raise')
    assert val[1].pipeline[0] == dict(type='SafeLoadImageFromFile', on_error='skip')
    assert cfg.test_dataloader.dataset.pipeline[0] == dict(type='SafeLoadImageFromFile',
                                                           on_error='raise')
    assert cfg.test_dataloader.dataset.pipeline[1] == dict(type='PackDetInputs')


@pytest.mark.parametrize('flags,loader', [([], 'SafeLoadImageFromFile'),
                                          (['--no-safety-hooks'], 'LoadImageFromFile')])
def test_train_config_loads_images_safely_unless_no_safety_hooks(tmp_path, runners, flags,
                                                                 loader):
    path = _write(_cfg(_write_data(tmp_path)), tmp_path / 'retina.py')
    assert train_main([path, '--work-dir', str(tmp_path / 'wd'), *flags]) == 0
    cfg = runners[0]
    assert cfg.train_dataloader.dataset.pipeline[0].type == loader
    assert cfg.val_dataloader.dataset.pipeline[0].get('on_error') == (
        'raise' if flags == [] else None)


# -------------------------------------------------------------------------- train_main
def test_train_stops_before_building_the_runner(tmp_path, runners, capsys):
    path = _write(_cfg(tmp_path), tmp_path / 'retina.py')  # no ann.json, no img/
    assert train_main([path, '--work-dir', str(tmp_path / 'wd')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'nothing was run' in err
    assert '[ERROR] train_dataloader.dataset.ann_file: annotation file' in err
    assert str(tmp_path / 'ann.json') in err
    assert runners == []


def test_train_skips_missing_imagenet_checkpoint_when_load_from_has_the_backbone(
        tmp_path, runners, monkeypatch):
    monkeypatch.setattr(launch, 'report_load_from', lambda runner, cfg: None)
    cfg = _cfg(_write_data(tmp_path), **_imagenet(tmp_path / 'in1k.pth'))
    cfg.load_from = str(tmp_path / 'coco.pth')
    torch.save({'state_dict': {'backbone.stem.weight': torch.zeros(1)}}, cfg.load_from)
    assert train_main([_write(cfg, tmp_path / 'retina.py'), '--work-dir', str(tmp_path)]) == 0
    assert runners[0].model.backbone.init_cfg is None


_WORKER_TEXT = (
    'Caught ImageLoadError in DataLoader worker process 0.\n'
    'Original Traceback (most recent call last):\n'
    '  File "/x/mmmobilemamba/engine/image_loading.py", line 96, in decode_image\n'
    "    raise ImageLoadError(f'image file is truncated (JPEG without end marker): {path}')\n"
    'mmmobilemamba.engine.image_loading.ImageLoadError: image file is truncated (JPEG without '
    'end marker): /x/a.jpg\n')


@pytest.mark.parametrize('error,printed', [
    (NonFiniteLossError('Training stopped: non-finite loss at iteration 3 (epoch 1): '
                        'loss_cls=nan.'),
     'Training stopped: non-finite loss at iteration 3 (epoch 1): loss_cls=nan.'),
    (ImageLoadError('cannot decode image /x/b.png: corrupt or not an image'),
     'cannot decode image /x/b.png: corrupt or not an image'),
    (ImageLoadError(_WORKER_TEXT), 'image file is truncated (JPEG without end marker): /x/a.jpg'),
])
def test_train_ends_with_exit_1_and_the_message_only(tmp_path, runners, capsys, error, printed):
    runners.error = error
    path = _write(_cfg(_write_data(tmp_path)), tmp_path / 'retina.py')
    assert train_main([path, '--work-dir', str(tmp_path / 'wd')]) == 1
    assert capsys.readouterr().err == f'error: {printed}\n'


def test_train_lets_other_errors_through(tmp_path, runners):
    runners.error = ValueError('a bug')
    path = _write(_cfg(_write_data(tmp_path)), tmp_path / 'retina.py')
    with pytest.raises(ValueError, match='a bug'):
        train_main([path, '--work-dir', str(tmp_path / 'wd')])


# --------------------------------------------------------------------------- test_main
def test_test_stops_on_a_missing_test_ann_file(tmp_path, runners, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    cfg = _cfg(tmp_path, **_imagenet(tmp_path / 'in1k.pth'))
    (tmp_path / 'img').mkdir()
    assert launch.test_main([_write(cfg, tmp_path / 'retina.py'), str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert '1 problem(s)' in err and '[ERROR] test_dataloader.dataset.ann_file: ' in err
    assert runners == []


@pytest.mark.parametrize('error,code', [(None, 0), (ImageLoadError('cannot read image file '
                                                                   '/x/a.png: gone'), 1)])
def test_test_exit_codes(tmp_path, runners, capsys, error, code):
    """The backbone's missing ImageNet checkpoint does not matter: the checkpoint loads over it."""
    runners.error = error
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    cfg = _cfg(_write_data(tmp_path), **_imagenet(tmp_path / 'in1k.pth'))
    assert launch.test_main([_write(cfg, tmp_path / 'retina.py'), str(checkpoint),
                      '--work-dir', str(tmp_path / 'wd')]) == code
    out = capsys.readouterr()
    if error:
        assert out.err == 'error: cannot read image file /x/a.png: gone\n'
    else:
        assert 'Evaluation results: coco/bbox_mAP: 0.5000' in out.out
        assert runners[0].test_dataloader.dataset.pipeline[0].on_error == 'raise'


def test_init_cfg_checkpoint_set_as_docs_say_is_not_an_error(tmp_path):
    weights = tmp_path / 'to.pth'
    torch.save({}, weights)
    (tmp_path / 'base.py').write_text(
        "pretrained = 'checkpoints/mobilemamba_b4.pth'\n"
        "model = dict(backbone=dict(type='MobileMamba', "
        "init_cfg=dict(type='Pretrained', checkpoint=pretrained)))\n")
    (tmp_path / 'child.py').write_text(
        f"_base_ = './base.py'\n"
        f"model = dict(backbone=dict(init_cfg=dict(checkpoint={str(weights)!r})))\n")
    assert check_checkpoint_files(Config.fromfile(str(tmp_path / 'child.py'))) == []


def test_tta_pipeline_loads_images_safely(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    args = launch.build_test_parser().parse_args(
        [str(REPO / 'configs/fpn_mobilemamba.py'), str(checkpoint), '--tta',
         '--work-dir', str(tmp_path / 'wd')])
    cfg = launch.prepare_test_config(args)
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'SafeLoadImageFromFile'
    assert cfg.test_dataloader.dataset.pipeline[0].on_error == 'raise'


class _Holder:
    def __init__(self, model):
        self.model = model


def test_load_from_that_fits_nothing_is_an_error(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1))
    foreign = tmp_path / 'imagenet.pth'
    torch.save({'net': {'stem.weight': torch.zeros(4, 3, 1, 1)}}, foreign)
    cfg = Config(dict(load_from=str(foreign)))
    with pytest.raises(LaunchError, match='no tensor that fits this model') as info:
        launch.report_load_from(_Holder(model), cfg)
    assert 'model.backbone.init_cfg' in str(info.value)
    # other classes: the class layer is skipped, the rest loads -> a report, no error
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 5, 1))
    partial = tmp_path / 'other_classes.pth'
    torch.save({'state_dict': other.state_dict()}, partial)
    launch.report_load_from(_Holder(model), Config(dict(load_from=str(partial))))


def test_train_and_test_stop_on_a_load_from_that_fits_nothing(tmp_path, runners, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(launch, 'run_preflight_checks', lambda *args, **kwargs: None)
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'x.weight': torch.zeros(1)}}, foreign)
    config = _write(_cfg(_write_data(tmp_path)), tmp_path / 'c.py')
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(_Runner, 'model', model, raising=False)
    code = train_main([config, '--work-dir', str(tmp_path / 'wd'),
                       '--cfg-options', f'load_from={foreign}'])
    assert code == 2 and 'no tensor that fits this model' in capsys.readouterr().err
    assert launch.test_main([config, str(foreign), '--work-dir', str(tmp_path / 'wd')]) == 2
