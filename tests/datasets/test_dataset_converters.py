"""VOC / YOLO / label-mask converters on small files written to tmp_path."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmmobilemamba.datasets.converters import (image_size, load_class_names, mask_to_polygons,
                                               masks_to_seg_layout, polygon_area, voc_to_coco,
                                               yolo_to_coco)

CLASSES = ('cat', 'dog')


def write_image(path: Path, width: int = 40, height: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (width, height), (90, 120, 150)).save(path)
    return path


def voc_xml(filename: str, objects, width=40, height=30) -> str:
    """A minimal VOC annotation; objects are (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [f'<annotation><filename>{filename}</filename>',
             f'<size><width>{width}</width><height>{height}</height><depth>3</depth></size>']
    for name, x0, y0, x1, y1, difficult in objects:
        parts.append(f'<object><name>{name}</name><difficult>{difficult}</difficult>'
                     f'<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>'
                     f'<ymax>{y1}</ymax></bndbox></object>')
    return ''.join(parts) + '</annotation>'


@pytest.fixture
def voc(tmp_path):
    """Two annotated images in VOC layout; returns (ann_dir, img_dir)."""
    ann_dir, img_dir = tmp_path / 'Annotations', tmp_path / 'JPEGImages'
    ann_dir.mkdir()
    write_image(img_dir / 'a.jpg')
    write_image(img_dir / 'b.jpg')
    (ann_dir / 'a.xml').write_text(voc_xml('a.jpg', [('cat', 1, 1, 40, 30, 0),
                                                     ('dog', 5, 6, 14, 20, 1)]))
    (ann_dir / 'b.xml').write_text(voc_xml('b.jpg', [('dog', 10.0, 10.0, 19.0, 12.0, 0)]))
    return ann_dir, img_dir


# --------------------------------------------------------------------------- VOC
def test_voc_coordinates_and_difficult_as_crowd(voc, tmp_path):
    out = tmp_path / 'out' / 'voc.json'
    coco = voc_to_coco(*voc, CLASSES, out)
    assert json.loads(out.read_text()) == coco
    assert [c['id'] for c in coco['categories']] == [1, 2]
    assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == \
        [('a.jpg', 40, 30), ('b.jpg', 40, 30)]
    full, hard, small = coco['annotations']
    # 1-based inclusive 1..40 covers the whole 40 px wide image.
    assert full['bbox'] == [0, 0, 40, 30] and full['category_id'] == 1
    assert hard['bbox'] == [4, 5, 10, 15] and hard['iscrowd'] == 1 and hard['area'] == 150
    assert small['bbox'] == [9, 9, 10, 3] and small['iscrowd'] == 0
    assert [a['id'] for a in coco['annotations']] == [1, 2, 3]
    assert [a['image_id'] for a in coco['annotations']] == [1, 1, 2]


@pytest.mark.parametrize('mode,count,crowd', [('skip', 2, 0), ('keep', 3, 0)])
def test_voc_difficult_modes(voc, mode, count, crowd):
    coco = voc_to_coco(*voc, CLASSES, difficult=mode)
    assert len(coco['annotations']) == count
    assert sum(a['iscrowd'] for a in coco['annotations']) == crowd


def test_voc_ids_file_and_list(voc, tmp_path):
    ann_dir, img_dir = voc
    (tmp_path / 'val.txt').write_text('b\n')
    assert [i['file_name'] for i in voc_to_coco(ann_dir, img_dir, CLASSES,
                                                ids=tmp_path / 'val.txt')['images']] == ['b.jpg']
    coco = voc_to_coco([ann_dir / 'b.xml', ann_dir / 'a.xml'], img_dir, CLASSES)
    assert [i['file_name'] for i in coco['images']] == ['b.jpg', 'a.jpg']


def test_voc_unknown_class(voc):
    ann_dir, img_dir = voc
    (ann_dir / 'b.xml').write_text(voc_xml('b.jpg', [('horse', 1, 1, 5, 5, 0)]))
    with pytest.raises(ValueError, match=r"b\.xml: object 0 \(horse\): unknown class 'horse'"):
        voc_to_coco(ann_dir, img_dir, CLASSES)
    coco = voc_to_coco(ann_dir, img_dir, CLASSES, skip_unknown=True)
    assert len(coco['annotations']) == 2


def test_voc_box_outside_image(voc):
    ann_dir, img_dir = voc
    (ann_dir / 'b.xml').write_text(voc_xml('b.jpg', [('cat', 0, 1, 41, 5, 0)]))
    with pytest.raises(ValueError, match=r'b\.xml: object 0 \(cat\): box .* outside the 40x30'):
        voc_to_coco(ann_dir, img_dir, CLASSES)
    coco = voc_to_coco(ann_dir, img_dir, CLASSES, clip_boxes=True)
    assert coco['annotations'][-1]['bbox'] == [0, 0, 40, 5]


def test_voc_missing_image_and_malformed_xml(voc):
    ann_dir, img_dir = voc
    (img_dir / 'b.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.xml: image 'b\.jpg' not found"):
        voc_to_coco(ann_dir, img_dir, CLASSES)
    assert len(voc_to_coco(ann_dir, None, CLASSES, check_images=False)['images']) == 2
    (ann_dir / 'a.xml').write_text('<annotation><filename>a.jpg</filename>')
    with pytest.raises(ValueError, match=r'a\.xml: malformed XML'):
        voc_to_coco(ann_dir, img_dir, CLASSES, check_images=False)


def test_voc_size_from_image_and_bad_numbers(voc):
    ann_dir, img_dir = voc
    write_image(img_dir / 'b.jpg', 64, 48)
    (ann_dir / 'b.xml').write_text('<annotation><filename>b.jpg</filename><object><name>dog'
                                   '</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>64</xmax>'
                                   '<ymax>48</ymax></bndbox></object></annotation>')
    coco = voc_to_coco(ann_dir, img_dir, CLASSES)
    assert (coco['images'][1]['width'], coco['images'][1]['height']) == (64, 48)
    (ann_dir / 'b.xml').write_text(voc_xml('b.jpg', [('dog', 'x', 1, 5, 5, 0)]))
    with pytest.raises(ValueError, match=r"object 0: <xmin> is not a number: 'x'"):
        voc_to_coco(ann_dir, img_dir, CLASSES)


# -------------------------------------------------------------------------- YOLO
@pytest.fixture
def yolo(tmp_path):
    """Images (one without labels) and YOLO labels; returns (label_dir, img_dir)."""
    img_dir, label_dir = tmp_path / 'images', tmp_path / 'labels'
    write_image(img_dir / 'a.png', 100, 50)
    write_image(img_dir / 'b.jpg', 100, 50)
    write_image(img_dir / 'empty.jpg', 20, 20)
    label_dir.mkdir()
    (label_dir / 'a.txt').write_text('0 0.5 0.5 1.0 1.0\n\n1 0.25 0.5 0.1 0.2\n')
    (label_dir / 'b.txt').write_text('1 0.1 0.2 0.5 0.2 0.5 0.8\n')
    return label_dir, img_dir


def test_yolo_boxes_segments_and_background_images(yolo, tmp_path):
    coco = yolo_to_coco(*yolo, CLASSES, tmp_path / 'yolo.json')
    assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == \
        [('a.png', 100, 50), ('b.jpg', 100, 50), ('empty.jpg', 20, 20)]
    whole, small, segment = coco['annotations']
    assert whole['bbox'] == [0, 0, 100, 50] and whole['category_id'] == 1
    assert small['bbox'] == pytest.approx([20, 20, 10, 10]) and small['category_id'] == 2
    assert segment['segmentation'] == [[10, 10, 50, 10, 50, 40]]
    assert segment['bbox'] == pytest.approx([10, 10, 40, 30])
    assert segment['area'] == pytest.approx(600)
    assert json.loads((tmp_path / 'yolo.json').read_text())['annotations'][2]['image_id'] == 2


@pytest.mark.parametrize('line,message', [
    ('0 0.5 0.5 0.2', r'a\.txt:2: expected "class cx cy w h"'),
    ('2 0.5 0.5 0.2 0.2', r'a\.txt:2: class index 2 is not in 0\.\.1'),
    ('0.5 0.5 0.5 0.2 0.2', r'a\.txt:2: class index 0\.5'),
    ('0 0.5 0.5 zero 0.2', r'a\.txt:2: non-numeric value'),
    ('0 0.95 0.5 0.2 0.2', r'a\.txt:2: box outside the image'),
    ('0 0.5 0.5 0 0.2', r'a\.txt:2: box width and height must be > 0'),
    ('1 0.1 0.1 0.5 0.1 1.5 0.5', r'a\.txt:2: segment outside the image'),
])
def test_yolo_bad_lines(yolo, line, message):
    label_dir, img_dir = yolo
    (label_dir / 'a.txt').write_text(f'0 0.5 0.5 0.2 0.2\n{line}\n')
    with pytest.raises(ValueError, match=message):
        yolo_to_coco(label_dir, img_dir, CLASSES)


def test_yolo_orphan_labels_and_tolerance(yolo):
    label_dir, img_dir = yolo
    (label_dir / 'ghost.txt').write_text('0 0.5 0.5 0.2 0.2\n')
    with pytest.raises(FileNotFoundError, match=r"1 label file\(s\) have no image.*ghost\.txt"):
        yolo_to_coco(label_dir, img_dir, CLASSES)
    with pytest.warns(UserWarning, match='ghost'):
        yolo_to_coco(label_dir, img_dir, CLASSES, strict=False)
    (label_dir / 'ghost.txt').unlink()
    (label_dir / 'a.txt').write_text('0 0.5 0.5 1.0005 1.0\n')
    assert yolo_to_coco(label_dir, img_dir, CLASSES)['annotations'][0]['bbox'] == \
        pytest.approx([0, 0, 100, 50])


def test_yolo_exif_rotated_image_size(tmp_path):
    img = Image.new('RGB', (60, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: decoders show it 20 wide, 60 high
    img.save(tmp_path / 'rot.jpg', exif=exif)
    assert image_size(tmp_path / 'rot.jpg') == (20, 60)


# ------------------------------------------------------------------- class names
def test_class_names_from_files(tmp_path):
    (tmp_path / 'classes.txt').write_text('cat\n# comment\n\ndog\n')
    assert load_class_names(tmp_path / 'classes.txt') == CLASSES
    (tmp_path / 'data.yaml').write_text('path: x\nnames:\n  0: cat\n  1: dog\n')
    assert load_class_names(tmp_path / 'data.yaml') == CLASSES
    (tmp_path / 'list.yaml').write_text('names: [cat, dog]\n')
    assert load_class_names(str(tmp_path / 'list.yaml')) == CLASSES
    with pytest.raises(ValueError, match='repeated class names'):
        load_class_names(['cat', 'cat'])
    with pytest.raises(FileNotFoundError, match='class-name file not found'):
        load_class_names(tmp_path / 'missing.txt')


# ----------------------------------------------------------------- label masks
def test_masks_to_seg_layout_with_value_map(tmp_path):
    write_image(tmp_path / 'img' / 'x.png', 8, 4)
    mask = np.array([[0, 1, 2, 255] * 2] * 4, dtype=np.uint8)
    (tmp_path / 'mask').mkdir()
    Image.fromarray(mask).save(tmp_path / 'mask' / 'x.png')
    summary = masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3,
                                  'validation', value_map={0: 1, 1: 2, 2: 3, 255: 0})
    assert summary['num_images'] == 1 and summary['class_pixels'] == [8, 8, 8, 8]
    written = np.asarray(Image.open(tmp_path / 'out/annotations/validation/x.png'))
    assert written.tolist() == [[1, 2, 3, 0] * 2] * 4
    with Image.open(tmp_path / 'out/images/validation/x.jpg') as img:
        assert img.format == 'JPEG' and img.size == (8, 4)
    with pytest.raises(ValueError, match=r'x\.png: label values \[255\] are outside 0\.\.3'):
        masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3)
    with pytest.raises(ValueError, match=r'values \[255\] are not in value_map'):
        masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3,
                            value_map={0: 0, 1: 1, 2: 2})


def test_masks_to_seg_layout_errors(tmp_path):
    write_image(tmp_path / 'img' / 'x.jpg', 8, 4)
    (tmp_path / 'mask').mkdir()
    with pytest.raises(FileNotFoundError, match=r'x\.jpg: no mask'):
        masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3)
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / 'mask' / 'x.png')
    with pytest.raises(ValueError, match='mask size 8x5 differs from image size'):
        masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3)
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, 4:] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / 'mask' / 'x.png')
    masks_to_seg_layout(tmp_path / 'img', tmp_path / 'mask', tmp_path / 'out', 3,
                        color_map={(0, 0, 0): 0, (255, 0, 0): 2})
    written = np.asarray(Image.open(tmp_path / 'out/annotations/training/x.png'))
    assert written[:, :4].max() == 0 and (written[:, 4:] == 2).all()


# -------------------------------------------------------------------- polygons
def test_mask_to_polygons_follows_pixel_edges():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True  # 6 x 3 rectangle
    mask[7:9, 0:2] = True  # second piece at the border
    polys = mask_to_polygons(mask)
    assert len(polys) == 2
    rect = np.array(max(polys, key=polygon_area)).reshape(-1, 2)
    # Vertices sit within 0.125 px of the pixel edges x = 3, 9 and y = 2, 5.
    assert rect.min(axis=0) == pytest.approx([3, 2], abs=0.13)
    assert rect.max(axis=0) == pytest.approx([9, 5], abs=0.13)
    mask_utils = pytest.importorskip('pycocotools.mask')
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 10, 12)))
    assert (decoded.astype(bool) == mask).all()
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    with pytest.raises(ValueError, match='2-D'):
        mask_to_polygons(np.zeros((2, 2, 2)))
