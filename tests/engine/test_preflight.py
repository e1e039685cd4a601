"""Pre-flight checks of tools/train.py and tools/test.py: one message listing every problem."""
import pytest
import torch
from engine_toys import imagenet_init, retinanet_cfg, write_empty_coco_dataset
from mmengine.config import Config

from mmmobilemamba.engine import check_checkpoint_files
from mmmobilemamba.engine.launch import LaunchError, run_preflight_checks


# ------------------------------------------------------------------------------- pre-flight
def test_preflight_lists_every_error_in_one_message(tmp_path):
    cfg = retinanet_cfg(tmp_path, num_classes=80, frozen_stage=1,
                        **imagenet_init(tmp_path / 'in1k.pth'))
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
    run_preflight_checks(retinanet_cfg(write_empty_coco_dataset(tmp_path)), ('train', 'val'),
                         training=True)


def test_checkpoints_are_only_checked_for_training(tmp_path):
    cfg = retinanet_cfg(write_empty_coco_dataset(tmp_path), **imagenet_init(tmp_path / 'in1k.pth'))
    cfg.load_from = str(tmp_path / 'coco.pth')
    run_preflight_checks(cfg, ('test',), training=False)
    with pytest.raises(LaunchError, match=r'2 problem\(s\)'):
        run_preflight_checks(cfg, ('test',), training=True)


@pytest.mark.parametrize('resume,sources', [(False, ['load_from']), (True, [])])
def test_missing_load_from_is_fine_when_resuming(tmp_path, resume, sources):
    cfg = Config(dict(load_from=str(tmp_path / 'missing.pth'), resume=resume))
    assert [p.source for p in check_checkpoint_files(cfg)] == sources


def _child_of(tmp_path, base_pretrained, child):
    """``child.py`` (``child`` below its ``_base_`` line) of a base whose backbone loads
    ``base_pretrained``, as a Config."""
    (tmp_path / 'base.py').write_text(
        f"pretrained = {base_pretrained!r}\n"
        "model = dict(backbone=dict(type='MobileMamba', "
        "init_cfg=dict(type='Pretrained', checkpoint=pretrained)))\n")
    (tmp_path / 'child.py').write_text(f"_base_ = './base.py'\n{child}")
    return Config.fromfile(str(tmp_path / 'child.py'))


def test_pretrained_variable_of_a_child_config_is_reported(tmp_path):
    """The base built its model dict with its own ``pretrained``: the child's never gets there."""
    weights = tmp_path / 'in1k.pth'
    torch.save({}, weights)
    problems = check_checkpoint_files(_child_of(tmp_path, None, f'pretrained = {str(weights)!r}\n'))
    assert [p.source for p in problems] == ['pretrained']
    assert f"is {str(weights)!r} but the backbone loads None" in problems[0].message
    cfg = _child_of(tmp_path, None, f'pretrained = {str(weights)!r}\n'
                    'model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))\n')
    assert check_checkpoint_files(cfg) == []


def test_init_cfg_checkpoint_set_as_docs_say_is_not_an_error(tmp_path):
    weights = tmp_path / 'to.pth'
    torch.save({}, weights)
    cfg = _child_of(tmp_path, 'checkpoints/mobilemamba_b4.pth',
                    f'model = dict(backbone=dict(init_cfg=dict(checkpoint={str(weights)!r})))\n')
    assert check_checkpoint_files(cfg) == []
