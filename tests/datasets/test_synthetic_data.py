"""Synthetic shapes datasets: determinism, idempotence and annotation validity."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmmobilemamba.datasets.converters import mask_to_polygons
from mmmobilemamba.datasets.synthetic import (DEMO_CLASSES, MANIFEST_NAME, SEG_CLASSES,
                                              generate_ade_shapes, generate_coco_shapes,
                                              render_coco_sample)

mask_utils = pytest.importorskip('pycocotools.mask')


def file_digests(root: Path) -> dict:
    """sha1 of every data file under root (the manifest holds timings, skip it)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file() and p.name != MANIFEST_NAME}


def load_split(summary: dict, split: str) -> dict:
    return json.loads((Path(summary['root']) / summary['splits'][split]['ann_file']).read_text())


def decode(ann: dict, height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects(ann['segmentation'], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def test_coco_same_seed_same_bytes(tmp_path):
    params = dict(num_train=3, num_val=2, image_size=96, seed=11)
    first = generate_coco_shapes(tmp_path / 'a', **params)
    second = generate_coco_shapes(tmp_path / 'b', **params)
    assert not first['skipped'] and not second['skipped']
    assert file_digests(tmp_path / 'a') == file_digests(tmp_path / 'b')
    other = generate_coco_shapes(tmp_path / 'c', **dict(params, seed=12))
    assert file_digests(tmp_path / 'c') != file_digests(tmp_path / 'a')
    assert other['splits']['train']['num_images'] == 3


def test_images_do_not_depend_on_split_size(tmp_path):
    generate_coco_shapes(tmp_path / 'small', num_train=2, num_val=1, image_size=96)
    generate_coco_shapes(tmp_path / 'large', num_train=4, num_val=1, image_size=96)
    name = 'train/shapes_train_00001.jpg'
    assert (tmp_path / 'small' / name).read_bytes() == (tmp_path / 'large' / name).read_bytes()


def test_ade_same_seed_same_bytes(tmp_path):
    params = dict(num_train=2, num_val=2, image_size=64, seed=5)
    generate_ade_shapes(tmp_path / 'a', **params)
    generate_ade_shapes(tmp_path / 'b', **params)
    assert file_digests(tmp_path / 'a') == file_digests(tmp_path / 'b')


def test_second_call_skips_and_changes_regenerate(tmp_path):
    root = tmp_path / 'ade'
    assert not generate_ade_shapes(root, num_train=3, num_val=1, image_size=64)['skipped']
    assert generate_ade_shapes(root, num_train=3, num_val=1, image_size=64)['skipped']
    # Fewer images: stale files would be picked up by mmseg's folder listing.
    again = generate_ade_shapes(root, num_train=2, num_val=1, image_size=64)
    assert not again['skipped']
    assert len(list((root / 'images' / 'training').iterdir())) == 2
    assert len(list((root / 'annotations' / 'training').iterdir())) == 2
    # A missing file makes the data incomplete.
    (root / 'images' / 'validation' / 'shapes_val_00000.jpg').unlink()
    assert not generate_ade_shapes(root, num_train=2, num_val=1, image_size=64)['skipped']
    assert generate_ade_shapes(root, num_train=2, num_val=1, image_size=64)['skipped']
    assert not generate_ade_shapes(root, num_train=2, num_val=1, image_size=64,
                                   force=True)['skipped']


def test_other_files_are_left_alone(tmp_path):
    root = tmp_path / 'coco'
    (root / 'train').mkdir(parents=True)
    (root / 'train' / 'mine.jpg').write_bytes(b'x')
    generate_coco_shapes(root, num_train=1, num_val=1, image_size=64, force=True)
    assert (root / 'train' / 'mine.jpg').read_bytes() == b'x'


def test_bad_parameters_raise(tmp_path):
    with pytest.raises(ValueError, match='image_size'):
        generate_coco_shapes(tmp_path, image_size=16)
    with pytest.raises(ValueError, match='min_objects'):
        generate_coco_shapes(tmp_path, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match='image_format'):
        generate_coco_shapes(tmp_path, image_format='gif')


def test_coco_structure(tiny_coco):
    root = Path(tiny_coco['root'])
    for split in ('train', 'val'):
        coco = load_split(tiny_coco, split)
        assert [c['id'] for c in coco['categories']] == list(range(1, len(DEMO_CLASSES) + 1))
        assert tuple(c['name'] for c in coco['categories']) == DEMO_CLASSES
        assert len(coco['images']) == tiny_coco['splits'][split]['num_images']
        assert len({img['id'] for img in coco['images']}) == len(coco['images'])
        ann_ids = [a['id'] for a in coco['annotations']]
        assert min(ann_ids) >= 1 and len(set(ann_ids)) == len(ann_ids)
        for img in coco['images']:
            with Image.open(root / tiny_coco['splits'][split]['img_dir'] / img['file_name']) as im:
                assert im.size == (img['width'], img['height'])
            count = sum(a['image_id'] == img['id'] for a in coco['annotations'])
            assert 1 <= count <= 6


def test_coco_annotations_match_their_masks(tiny_coco):
    coco = load_split(tiny_coco, 'train')
    sizes = {img['id']: (img['height'], img['width']) for img in coco['images']}
    seen = {}
    for ann in coco['annotations']:
        height, width = sizes[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= len(DEMO_CLASSES)
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann['segmentation'])
        mask = decode(ann, height, width)
        assert abs(int(mask.sum()) - ann['area']) <= 0.02 * ann['area'] + 2
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1 - cols.min(),
                rows.max() + 1 - rows.min()) == (x, y, w, h)
        # Visible regions of one image never overlap (occlusion is consistent).
        union = seen.setdefault(ann['image_id'], np.zeros_like(mask))
        assert (union & mask).sum() <= 2
        union |= mask


def test_polygons_reproduce_visible_masks():
    for seed in range(8):
        image, objects = render_coco_sample(seed, 128, 96)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        for obj in objects:
            polys = mask_to_polygons(obj['mask'])
            decoded = decode(dict(segmentation=polys), 96, 128)
            iou = (decoded & obj['mask']).sum() / (decoded | obj['mask']).sum()
            assert iou > 0.97


def test_has_small_large_and_occluded_objects(tmp_path):
    summary = generate_coco_shapes(tmp_path, num_train=30, num_val=1, image_size=192)
    coco = load_split(summary, 'train')
    areas = np.array([a['area'] for a in coco['annotations']])
    assert (areas < 32 ** 2).any() and (areas > 64 ** 2).any()
    labels = {a['category_id'] for a in coco['annotations']}
    assert labels == set(range(1, len(DEMO_CLASSES) + 1))
    # Occlusion: some visible boxes overlap.
    boxes = {}
    for ann in coco['annotations']:
        boxes.setdefault(ann['image_id'], []).append(ann['bbox'])
    overlaps = 0
    for group in boxes.values():
        for i, (x, y, w, h) in enumerate(group):
            for (u, v, p, q) in group[i + 1:]:
                overlaps += min(x + w, u + p) > max(x, u) and min(y + h, v + q) > max(y, v)
    assert overlaps > 0


def test_ade_layout_and_label_range(tiny_ade):
    root = Path(tiny_ade['root'])
    for split, sub in (('train', 'training'), ('val', 'validation')):
        images = sorted((root / 'images' / sub).glob('*.jpg'))
        labels = sorted((root / 'annotations' / sub).glob('*.png'))
        assert len(images) == len(labels) == tiny_ade['splits'][split]['num_images']
        assert [p.stem for p in images] == [p.stem for p in labels]
        for img_path, lab_path in zip(images, labels):
            with Image.open(img_path) as img, Image.open(lab_path) as lab:
                assert lab.mode == 'L' and img.size == lab.size
                values = np.asarray(lab)
            assert values.max() <= len(SEG_CLASSES)
        pixels = tiny_ade['splits'][split]['class_pixels']
        assert len(pixels) == len(SEG_CLASSES) + 1
        assert pixels[1] > 0  # every scene has sky
