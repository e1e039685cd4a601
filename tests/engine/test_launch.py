"""tools/train.py and tools/test.py entry points: exit codes and messages, with the runner
replaced (nothing is trained)."""
import pytest
import torch
from engine_toys import dump_config, imagenet_init, retinanet_cfg, write_empty_coco_dataset
from mmengine.config import Config

from mmmobilemamba.engine import ImageLoadError, NonFiniteLossError, launch
from mmmobilemamba.engine.launch import LaunchError, train_main


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


# -------------------------------------------------------------------------- train_main
@pytest.mark.parametrize('flags,on_error', [([], 'skip'), (['--no-safety-hooks'], None)])
def test_train_config_skips_broken_training_images_unless_no_safety_hooks(tmp_path, runners,
                                                                          flags, on_error):
    path = dump_config(retinanet_cfg(write_empty_coco_dataset(tmp_path)), tmp_path / 'retina.py')
    assert train_main([path, '--work-dir', str(tmp_path / 'wd'), *flags]) == 0
    cfg = runners[0]
    # the type name the inferencers look for is kept; validation raises (the loader's default)
    assert cfg.train_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile'
    assert cfg.train_dataloader.dataset.pipeline[0].get('on_error') == on_error
    assert cfg.val_dataloader.dataset.pipeline[0] == dict(type='LoadImageFromFile')


def test_train_stops_before_building_the_runner(tmp_path, runners, capsys):
    path = dump_config(retinanet_cfg(tmp_path), tmp_path / 'retina.py')  # no ann.json, no img/
    assert train_main([path, '--work-dir', str(tmp_path / 'wd')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'nothing was run' in err
    assert '[ERROR] train_dataloader.dataset.ann_file: annotation file' in err
    assert str(tmp_path / 'ann.json') in err
    assert runners == []


def test_train_skips_missing_imagenet_checkpoint_when_load_from_has_the_backbone(
        tmp_path, runners, monkeypatch):
    monkeypatch.setattr(launch, 'report_load_from', lambda runner, cfg, training: None)
    cfg = retinanet_cfg(write_empty_coco_dataset(tmp_path), **imagenet_init(tmp_path / 'in1k.pth'))
    cfg.load_from = str(tmp_path / 'coco.pth')
    torch.save({'state_dict': {'backbone.stem.weight': torch.zeros(1)}}, cfg.load_from)
    assert train_main([dump_config(cfg, tmp_path / 'retina.py'), '--work-dir', str(tmp_path)]) == 0
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
    path = dump_config(retinanet_cfg(write_empty_coco_dataset(tmp_path)), tmp_path / 'retina.py')
    assert train_main([path, '--work-dir', str(tmp_path / 'wd')]) == 1
    assert capsys.readouterr().err == f'error: {printed}\n'


def test_train_lets_other_errors_through(tmp_path, runners):
    runners.error = ValueError('a bug')
    path = dump_config(retinanet_cfg(write_empty_coco_dataset(tmp_path)), tmp_path / 'retina.py')
    with pytest.raises(ValueError, match='a bug'):
        train_main([path, '--work-dir', str(tmp_path / 'wd')])


# --------------------------------------------------------------------------- test_main
def test_test_stops_on_a_missing_test_ann_file(tmp_path, runners, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    cfg = retinanet_cfg(tmp_path, **imagenet_init(tmp_path / 'in1k.pth'))
    (tmp_path / 'img').mkdir()
    assert launch.test_main([dump_config(cfg, tmp_path / 'retina.py'), str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert '1 problem(s)' in err and '[ERROR] test_dataloader.dataset.ann_file: ' in err
    assert runners == []


@pytest.mark.parametrize('error,code', [(None, 0), (ImageLoadError('cannot read image file '
                                                                   '/x/a.png: gone'), 1)])
def test_test_exit_codes(tmp_path, runners, capsys, monkeypatch, error, code):
    """The backbone's missing ImageNet checkpoint does not matter: the checkpoint loads over it."""
    monkeypatch.setattr(launch, 'report_load_from', lambda runner, cfg, training: None)
    runners.error = error
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    cfg = retinanet_cfg(write_empty_coco_dataset(tmp_path), **imagenet_init(tmp_path / 'in1k.pth'))
    assert launch.test_main([dump_config(cfg, tmp_path / 'retina.py'), str(checkpoint),
                      '--work-dir', str(tmp_path / 'wd')]) == code
    out = capsys.readouterr()
    if error:
        assert out.err == 'error: cannot read image file /x/a.png: gone\n'
    else:
        assert 'Evaluation results: coco/bbox_mAP: 0.5000' in out.out
        assert runners[0].test_dataloader.dataset.pipeline[0] == dict(type='LoadImageFromFile')


class _Holder:
    def __init__(self, model):
        self.model = model


def _detector_like(num_classes: int) -> torch.nn.Module:
    model = torch.nn.Module()
    model.backbone = torch.nn.Conv2d(3, 4, 1)
    model.conv_cls = torch.nn.Conv2d(4, num_classes, 1)
    return model


def test_load_from_that_fits_nothing_is_an_error(tmp_path):
    model = _detector_like(2)
    foreign = tmp_path / 'imagenet.pth'
    torch.save({'net': {'stem.weight': torch.zeros(4, 3, 1, 1)}}, foreign)
    cfg = Config(dict(load_from=str(foreign)))
    with pytest.raises(LaunchError, match='no tensor that fits this model') as info:
        launch.report_load_from(_Holder(model), cfg)
    assert 'model.backbone.init_cfg' in str(info.value)


def test_unreadable_checkpoint_is_an_error_naming_it(tmp_path):
    empty = tmp_path / 'model.pth'
    empty.write_bytes(b'')
    with pytest.raises(LaunchError, match=f'cannot read the checkpoint {empty}'):
        launch.report_load_from(_Holder(_detector_like(2)), Config(dict(load_from=str(empty))),
                                training=False)


def test_load_from_of_another_num_classes_fine_tunes_but_does_not_test(tmp_path):
    """Training re-initialises the class-dependent layers; testing such a checkpoint stops."""
    partial = tmp_path / 'other_classes.pth'
    torch.save({'state_dict': _detector_like(5).state_dict()}, partial)
    cfg = Config(dict(load_from=str(partial)))
    launch.report_load_from(_Holder(_detector_like(2)), cfg, training=True)
    with pytest.raises(LaunchError, match='does not fit this model') as info:
        launch.report_load_from(_Holder(_detector_like(2)), cfg, training=False)
    assert 'skipped conv_cls.weight: checkpoint (5, 4, 1, 1) vs model (2, 4, 1, 1)' in \
        str(info.value)


@pytest.mark.parametrize('training', [True, False])
def test_load_from_with_missing_unexpected_or_misshaped_tensors_is_an_error(tmp_path, training):
    state = _detector_like(2).state_dict()
    state.pop('backbone.bias')
    state['neck.weight'] = torch.zeros(1)
    path = tmp_path / 'other_model.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(LaunchError) as info:
        launch.report_load_from(_Holder(_detector_like(2)), Config(dict(load_from=str(path))),
                                training=training)
    message = str(info.value)
    assert '1 model tensors not in the checkpoint (kept at init): backbone.bias' in message
    assert '1 checkpoint tensors unused by the model: neck.weight' in message
    # a non-class layer of another shape is never a fine-tuning case
    state = _detector_like(2).state_dict()
    state['backbone.weight'] = torch.zeros(8, 3, 1, 1)
    torch.save({'state_dict': state}, path)
    with pytest.raises(LaunchError, match='skipped backbone.weight: .* shape differs'):
        launch.report_load_from(_Holder(_detector_like(2)), Config(dict(load_from=str(path))),
                                training=training)


def test_train_and_test_stop_on_a_load_from_that_fits_nothing(tmp_path, runners, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(launch, 'run_preflight_checks', lambda *args, **kwargs: None)
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'x.weight': torch.zeros(1)}}, foreign)
    config = dump_config(retinanet_cfg(write_empty_coco_dataset(tmp_path)), tmp_path / 'c.py')
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(_Runner, 'model', model, raising=False)
    code = train_main([config, '--work-dir', str(tmp_path / 'wd'),
                       '--cfg-options', f'load_from={foreign}'])
    assert code == 2 and 'no tensor that fits this model' in capsys.readouterr().err
    assert launch.test_main([config, str(foreign), '--work-dir', str(tmp_path / 'wd')]) == 2


@pytest.mark.parametrize('main', ['train', 'test'])
@pytest.mark.parametrize('error', [None, ImageLoadError('bad.jpg: cannot decode')])
def test_entry_points_destroy_the_process_group(tmp_path, runners, monkeypatch, main, error):
    """A distributed run ends with its process group destroyed, also when it stops early
    (left to the interpreter's exit, gloo's threads can abort the process)."""
    import torch.distributed as dist
    path = dump_config(retinanet_cfg(write_empty_coco_dataset(tmp_path)), tmp_path / 'retina.py')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', '29561')
    dist.init_process_group('gloo', rank=0, world_size=1)
    try:
        runners.error = error
        if main == 'train':
            code = train_main([path, '--work-dir', str(tmp_path / 'wd')])
        else:
            monkeypatch.setattr(launch, 'report_load_from', lambda runner, cfg, training: None)
            checkpoint = tmp_path / 'model.pth'
            checkpoint.write_bytes(b'')
            code = launch.test_main([path, str(checkpoint), '--work-dir', str(tmp_path / 'wd')])
        assert code == (0 if error is None else 1)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
