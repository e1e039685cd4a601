"""Config rewrites of tools/train.py and tools/test.py: backbone init under load_from, safe
image loading."""
from pathlib import Path

import pytest
import torch
from engine_toys import imagenet_init, retinanet_cfg
from mmengine.config import Config

from mmmobilemamba.engine import apply_safe_image_loading, launch, skip_backbone_pretrained

REPO = Path(__file__).resolve().parents[2]


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
    cfg = retinanet_cfg(tmp_path, **imagenet_init(tmp_path / 'in1k.pth'))
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
    """Training skips broken images; the type stays LoadImageFromFile (what the inferencers
    look for); mmcv's scoped loader becomes ours; other loaders are kept."""
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
        type='LoadImageFromFile', to_float32=True, on_error='skip')
    val = cfg.val_dataloader.dataset.datasets
    assert val[0].pipeline[0] == dict(type='LoadImageFromFile')
    assert val[1].pipeline[0] == dict(type='SafeLoadImageFromFile', on_error='skip')
    assert cfg.test_dataloader.dataset.pipeline[0] == dict(type='LoadImageFromFile')
    assert cfg.test_dataloader.dataset.pipeline[1] == dict(type='PackDetInputs')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_load_image_from_file_is_the_checked_loader_in_mmdet_and_mmseg(scope, tmp_path):
    import importlib

    import numpy as np
    from mmcv.transforms import LoadImageFromFile as MmcvLoader
    from mmengine.registry import DefaultScope
    from PIL import Image

    from mmmobilemamba.engine import CheckedLoadImageFromFile, ImageLoadError
    pytest.importorskip(scope)
    transforms = importlib.import_module(f'{scope}.registry').TRANSFORMS
    image = tmp_path / 'ok.jpg'
    Image.fromarray((np.random.RandomState(0).rand(20, 30, 3) * 255).astype('uint8')).save(image)
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(image.read_bytes()[:200])
    with DefaultScope.overwrite_default_scope(scope):
        loader = transforms.build(dict(type='LoadImageFromFile'))
        skipping = transforms.build(dict(type='LoadImageFromFile', on_error='skip'))
    assert isinstance(loader, CheckedLoadImageFromFile)
    ours, mmcv = loader(dict(img_path=str(image))), MmcvLoader()(dict(img_path=str(image)))
    assert np.array_equal(ours['img'], mmcv['img']) and ours['ori_shape'] == mmcv['ori_shape']
    with pytest.raises(ImageLoadError, match=str(broken)):
        loader(dict(img_path=str(broken)))
    assert skipping(dict(img_path=str(broken))) is None


def test_tta_pipeline_loads_images_safely(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    args = launch.build_test_parser().parse_args(
        [str(REPO / 'configs/fpn_mobilemamba.py'), str(checkpoint), '--tta',
         '--work-dir', str(tmp_path / 'wd')])
    cfg = launch.prepare_test_config(args)
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile'
    assert 'on_error' not in cfg.test_dataloader.dataset.pipeline[0]  # the loader raises
