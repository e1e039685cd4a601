"""Dataset checks on small broken datasets written to tmp_path."""
import json

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmmobilemamba.engine import check_class_counts, check_dataset_config, check_dataset_paths
from mmmobilemamba.engine.dataset_check import ERROR, WARNING, head_num_classes

CLASSES = ('cat', 'dog')


def _errors(problems):
    return [str(p) for p in problems if p.severity == ERROR]


def _error_sources(problems):
    return [p.source for p in problems if p.severity == ERROR]


def _warnings(problems):
    return [str(p) for p in problems if p.severity == WARNING]


def test_head_num_classes_walks_nested_heads_and_lists():
    model = dict(
        backbone=dict(num_classes=1000),  # a classifier backbone: not a dataset head
        rpn_head=dict(num_classes=1),
        roi_head=dict(bbox_head=[dict(num_classes=80), dict(num_classes=80)],
                      mask_head=dict(num_classes=80)),
        decode_head=dict(num_classes=19),
        auxiliary_head=[dict(num_classes=19, loss_decode=dict(num_classes=19))])
    assert head_num_classes(model) == [
        ('model.roi_head.bbox_head.0.num_classes', 80),
        ('model.roi_head.bbox_head.1.num_classes', 80),
        ('model.roi_head.mask_head.num_classes', 80),
        ('model.decode_head.num_classes', 19),
        ('model.auxiliary_head.0.num_classes', 19),
        ('model.auxiliary_head.0.loss_decode.num_classes', 19),
    ]


# ---------------------------------------------------------------------------- detection
def _write_png(path, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


@pytest.fixture
def broken_coco(tmp_path):
    """Images: ok.png fine, missing.png absent, corrupt.png garbage, small.png 32x32 but
    annotated 64x64. Annotations: one per kind of box problem."""
    _write_png(tmp_path / 'img' / 'ok.png')
    _write_png(tmp_path / 'img' / 'small.png', size=(32, 32))
    (tmp_path / 'img' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    images = [dict(id=i + 1, file_name=name, width=64, height=64)
              for i, name in enumerate(['ok.png', 'missing.png', 'corrupt.png', 'small.png'])]
    boxes = [[5, 5, 10, 10], [5, 5, 0, 10], [100, 100, 5, 5], [60, 60, 20, 20], [1, 1, 3, 3]]
    annotations = [dict(id=i + 1, image_id=1, category_id=1, bbox=box, area=box[2] * box[3],
                        iscrowd=0) for i, box in enumerate(boxes)]
    annotations[-1]['category_id'] = 9  # not a category
    categories = [dict(id=1, name='cat'), dict(id=2, name='dog')]
    with open(tmp_path / 'train.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return tmp_path


def _det_cfg(root, num_classes=2, classes=CLASSES):
    dataset = dict(type='CocoDataset', data_root=str(root), ann_file='train.json',
                   data_prefix=dict(img='img/'), metainfo=dict(classes=classes), pipeline=[])
    return Config(dict(
        default_scope='mmdet',
        model=dict(type='RetinaNet', bbox_head=dict(type='RetinaHead', num_classes=num_classes)),
        train_dataloader=dict(dataset=dataset),
        val_dataloader=dict(dataset=dict(dataset, test_mode=True))))


def test_detection_problems_are_named(broken_coco):
    pytest.importorskip('mmdet')
    problems = check_dataset_config(_det_cfg(broken_coco), full=True)
    errors = '\n'.join(_errors(problems))
    assert 'non-positive size' in errors and '[5, 5, 0, 10]' in errors
    assert 'outside the 64x64 image' in errors and '[100, 100, 5, 5]' in errors
    assert 'category_id 9 is not in "categories"' in errors
    assert 'missing.png' in errors and 'corrupt.png' in errors
    assert 'small.png' in errors and 'decoded image is 32x32' in errors
    assert 'ok.png (annotation 1)' not in errors
    assert any('extends beyond' in w and '[60, 60, 20, 20]' in w for w in _warnings(problems))
    # val reads the same files: reported once
    assert sum('[5, 5, 0, 10]' in e for e in _errors(problems)) == 1


def test_image_files_are_only_read_with_full(broken_coco):
    pytest.importorskip('mmdet')
    errors = '\n'.join(_errors(check_dataset_config(_det_cfg(broken_coco), full=False)))
    assert 'non-positive size' in errors and 'missing.png' not in errors


def test_classes_missing_or_reordered_in_the_json(broken_coco):
    pytest.importorskip('mmdet')
    errors = '\n'.join(_errors(check_dataset_config(_det_cfg(broken_coco, classes=('dog', 'cat')))))
    assert 'another order' in errors
    errors = '\n'.join(_errors(check_dataset_config(_det_cfg(broken_coco, classes=('cat', 'cow')))))
    assert "classes ['cow']" in errors


def test_detection_class_count_mismatch_message(broken_coco):
    pytest.importorskip('mmdet')
    problems = check_class_counts(_det_cfg(broken_coco, num_classes=80))
    assert _error_sources(problems) == ['model.bbox_head.num_classes']
    message = _errors(problems)[0]
    assert 'model.bbox_head.num_classes: 80 in the model' in message
    assert 'train_dataloader.dataset has 2 classes (cat, dog)' in message
    assert 'model.bbox_head.num_classes=2' in message
    assert not check_class_counts(_det_cfg(broken_coco, num_classes=2))


def test_default_metainfo_of_an_unconfigured_dataset_counts(broken_coco):
    pytest.importorskip('mmdet')
    cfg = _det_cfg(broken_coco)
    del cfg.val_dataloader.dataset['metainfo']  # falls back to the 80 COCO classes
    errors = _errors(check_class_counts(cfg))
    assert any('val_dataloader.dataset has 80 classes' in e for e in errors)
    assert any('datasets disagree' in e for e in errors)


# ------------------------------------------------------------------------- segmentation
@pytest.fixture
def broken_seg(tmp_path):
    """a: fine; b: mask of the wrong size; c: label 7 with 3 classes; d: mask missing."""
    for name in 'abcd':
        _write_png(tmp_path / 'img' / f'{name}.png')
    masks = dict(a=np.full((64, 64), 2, np.uint8), b=np.zeros((32, 64), np.uint8),
                 c=np.full((64, 64), 7, np.uint8))
    masks['a'][0, 0] = 255  # the ignore index is allowed
    (tmp_path / 'ann').mkdir()
    for name, mask in masks.items():
        Image.fromarray(mask).save(tmp_path / 'ann' / f'{name}.png')
    return tmp_path


def _seg_cfg(root, num_classes=3):
    dataset = dict(type='BaseSegDataset', data_root=str(root), img_suffix='.png',
                   seg_map_suffix='.png', data_prefix=dict(img_path='img', seg_map_path='ann'),
                   metainfo=dict(classes=('bg', 'road', 'car')), pipeline=[])
    head = dict(type='FCNHead', num_classes=num_classes)
    return Config(dict(default_scope='mmseg',
                       model=dict(type='EncoderDecoder', decode_head=head,
                                  auxiliary_head=[head, head]),
                       train_dataloader=dict(dataset=dataset)))


def test_segmentation_problems_are_named(broken_seg):
    pytest.importorskip('mmseg')
    problems = check_dataset_config(_seg_cfg(broken_seg), full=True)
    errors = _errors(problems)
    assert len(errors) == 3, errors
    joined = '\n'.join(errors)
    assert 'ann/b.png' in joined and 'mask is 64x32' in joined
    assert 'ann/c.png' in joined and 'label values [7]' in joined
    assert 'ann/d.png' in joined


def test_segmentation_class_count_names_every_head(broken_seg):
    pytest.importorskip('mmseg')
    problems = check_class_counts(_seg_cfg(broken_seg, num_classes=19))
    assert _error_sources(problems) == [
        'model.decode_head.num_classes', 'model.auxiliary_head.0.num_classes',
        'model.auxiliary_head.1.num_classes']
    assert 'has 3 classes' in _errors(problems)[0]


def test_empty_segmentation_dataset_is_an_error(tmp_path):
    pytest.importorskip('mmseg')
    (tmp_path / 'img').mkdir()
    (tmp_path / 'ann').mkdir()
    errors = _errors(check_dataset_config(_seg_cfg(tmp_path)))
    assert len(errors) == 1 and 'no samples' in errors[0]


# ---------------------------------------------------------------------------- polygons
def test_malformed_or_misplaced_polygons(broken_coco):
    pytest.importorskip('mmdet')
    coco = json.loads((broken_coco / 'train.json').read_text())
    polygons = {
        'odd': [[5, 5, 20, 5, 20]],                    # 5 values
        'two_points': [[5, 5, 20, 20]],                # a line, not an area
        'elsewhere': [[100, 100, 140, 100, 140, 130]],  # drawn for a larger image
        'overhang': [[50, 50, 80, 50, 80, 60]],        # clipped, still usable
        'good': [[5, 5, 20, 5, 20, 20]],
    }
    coco['annotations'] = [
        dict(id=i + 1, image_id=1, category_id=1, bbox=[5, 5, 10, 10], area=100, iscrowd=0,
             segmentation=poly) for i, poly in enumerate(polygons.values())]
    (broken_coco / 'train.json').write_text(json.dumps(coco))
    problems = check_dataset_config(_det_cfg(broken_coco))
    errors, warnings = _errors(problems), _warnings(problems)
    assert any('annotation 1)' in e and 'has 5 values' in e for e in errors)
    assert any('annotation 2)' in e and 'has 4 values' in e for e in errors)
    assert any('annotation 3)' in e and 'lies outside the 64x64 image' in e for e in errors)
    assert len(errors) == 3, errors
    assert any('annotation 4)' in w and 'extends beyond' in w for w in warnings)
    assert not any('annotation 5)' in p for p in errors + warnings)


# ----------------------------------------------------------------------- dataset paths
def test_missing_annotation_file_and_folders_name_their_keys(broken_coco):
    pytest.importorskip('mmdet')
    cfg = _det_cfg(broken_coco)
    cfg.train_dataloader.dataset.ann_file = 'annotations/nope.json'
    cfg.val_dataloader.dataset.data_prefix = dict(img='no_images/')
    problems = check_dataset_paths(cfg)
    assert _error_sources(problems) == ['train_dataloader.dataset.ann_file',
                                        'val_dataloader.dataset.data_prefix.img']
    errors = _errors(problems)
    assert errors[0].startswith('[ERROR] train_dataloader.dataset.ann_file: annotation file '
                                f'{broken_coco}/annotations/nope.json does not exist')
    assert "ann_file='annotations/nope.json'" in errors[0]
    assert errors[1].startswith('[ERROR] val_dataloader.dataset.data_prefix.img: data folder '
                                f'{broken_coco}/no_images/ does not exist')
    assert check_dataset_paths(_det_cfg(broken_coco)) == []
    # the full check says it once, and does not go on to read that dataset
    full = _errors(check_dataset_config(cfg))
    assert sum('nope.json' in e for e in full) == 1


def test_missing_segmentation_folders_and_demo_data_hint(tmp_path):
    pytest.importorskip('mmseg')
    cfg = _seg_cfg(tmp_path / 'demo_ade')
    problems = check_dataset_paths(cfg)
    assert _error_sources(problems) == ['train_dataloader.dataset.data_prefix.img_path',
                                        'train_dataloader.dataset.data_prefix.seg_map_path']
    assert all('generate_demo_data.py' in e for e in _errors(problems))


def test_remote_datasets_are_not_looked_up(broken_coco):
    pytest.importorskip('mmdet')
    cfg = _det_cfg(broken_coco)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = 's3://bucket/data'
    assert check_dataset_paths(cfg) == []
