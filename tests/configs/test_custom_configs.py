"""configs/custom/: the fine-tuning examples run on small data written here, end to end."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmmobilemamba.datasets.converters import masks_to_seg_layout
from mmmobilemamba.datasets.synthetic import generate_ade_shapes, generate_coco_shapes
from mmmobilemamba.engine import check_class_counts, check_model_channels

ROOT = Path(__file__).parents[2]
DET = ROOT / 'configs/custom/retinanet_mobilemamba-b1_fpn_custom-3cls.py'
SEG = ROOT / 'configs/custom/fpn_mobilemamba-b4_custom-4cls-512x512.py'


def _three_class_coco(tmp_path: Path, classes) -> Path:
    """The built-in shapes, kept to 3 categories renamed to the config's classes."""
    src = tmp_path / 'src'
    generate_coco_shapes(src, num_train=4, num_val=2, image_size=64)
    root = tmp_path / 'my_det'
    for split in ('train', 'val'):
        coco = json.loads((src / f'annotations/instances_{split}.json').read_text())
        coco['categories'] = [dict(id=i + 1, name=n) for i, n in enumerate(classes)]
        coco['annotations'] = [a for a in coco['annotations'] if a['category_id'] <= 3]
        (root / 'annotations').mkdir(parents=True, exist_ok=True)
        (root / f'annotations/{split}.json').write_text(json.dumps(coco))
        shutil.copytree(src / split, root / f'images/{split}')
    return root


def _small(cfg: Config, work_dir: Path) -> Config:
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.pretrained = None
    cfg.model.backbone.init_cfg = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(type='AtomicCheckpointHook', interval=1)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.val_dataloader.num_workers = 0
    cfg.val_dataloader.persistent_workers = False
    cfg.test_dataloader = cfg.val_dataloader
    cfg.param_scheduler = []
    return cfg


def _runner(cfg: Config):
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg)


def test_custom_detection_config_trains_and_evaluates(tmp_path):
    cfg = Config.fromfile(str(DET))
    root = _three_class_coco(tmp_path, cfg.classes)
    cfg = _small(cfg, tmp_path / 'work')
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = str(root) + '/'
        for step in loader.dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (96, 96)
    cfg.val_evaluator.ann_file = str(root / 'annotations/val.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)
    assert [p for p in check_class_counts(cfg) if p.severity == 'error'] == []
    assert check_model_channels(cfg) == []
    runner = _runner(cfg)
    runner.train()
    assert runner.model.bbox_head.num_classes == 3
    assert (tmp_path / 'work/epoch_1.pth').is_file()


def test_custom_detection_config_with_wrong_num_classes_is_stopped(tmp_path):
    cfg = Config.fromfile(str(DET))
    root = _three_class_coco(tmp_path, cfg.classes)
    cfg.train_dataloader.dataset.data_root = str(root) + '/'
    cfg.val_dataloader.dataset.data_root = str(root) + '/'
    cfg.model.bbox_head.num_classes = 80
    errors = [str(p) for p in check_class_counts(cfg) if p.severity == 'error']
    assert errors and 'model.bbox_head.num_classes' in errors[0] and '3 classes' in errors[0]


def test_custom_segmentation_config_trains_and_evaluates(tmp_path):
    # demo label maps (1..7) -> a 4-class set through the converter: 5..7 become class 4
    src = tmp_path / 'src'
    generate_ade_shapes(src, num_train=4, num_val=2, image_size=64)
    root = tmp_path / 'my_seg'
    value_map = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 4, 7: 4}
    for split in ('training', 'validation'):
        masks_to_seg_layout(src / 'images' / split, src / 'annotations' / split, root, 4,
                            split=split, value_map=value_map)
    label = np.asarray(Image.open(next((root / 'annotations/training').glob('*.png'))))
    assert label.max() <= 4
    cfg = _small(Config.fromfile(str(SEG)), tmp_path / 'work')
    cfg.model.data_preprocessor.size = (64, 64)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = str(root) + '/'
        for step in loader.dataset.pipeline:
            if step['type'] in ('RandomResize', 'Resize'):
                step['scale'] = (64, 64)
            if step['type'] == 'RandomCrop':
                step['crop_size'] = (64, 64)
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint = dict(type='AtomicCheckpointHook', by_epoch=False, interval=2)
    # one process: SyncBN heads fall back to BN
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    assert [p for p in check_class_counts(cfg) if p.severity == 'error'] == []
    runner = _runner(cfg)
    runner.train()
    assert runner.model.decode_head.num_classes == 4
    assert (tmp_path / 'work/iter_2.pth').is_file()
