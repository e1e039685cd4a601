"""The thin CLIs in tools/ call the package and report errors without tracebacks."""
import json

import numpy as np
from PIL import Image
from tool_modules import load_tool


def test_generate_demo_data_cli(tmp_path, capsys):
    tool = load_tool('misc/generate_demo_data.py')
    args = ['--out-root', str(tmp_path), '--num-train', '2', '--num-val', '1',
            '--image-size', '64']
    assert tool.main(args) == 0
    assert (tmp_path / 'demo_coco/annotations/instances_train.json').is_file()
    assert len(list((tmp_path / 'demo_ade/annotations/validation').glob('*.png'))) == 1
    assert tool.main(args + ['--task', 'det']) == 0
    assert 'already complete' in capsys.readouterr().out


def test_voc2coco_cli(tmp_path, capsys):
    tool = load_tool('dataset_converters/voc2coco.py')
    (tmp_path / 'ann').mkdir()
    (tmp_path / 'ann/a.xml').write_text(
        '<annotation><filename>a.jpg</filename><size><width>10</width><height>10</height>'
        '</size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>'
        '<ymax>5</ymax></bndbox></object></annotation>')
    out = tmp_path / 'voc.json'
    assert tool.main([str(tmp_path / 'ann'), '--classes', 'cat', 'dog', '--out', str(out),
                      '--no-check-images']) == 0
    assert json.loads(out.read_text())['annotations'][0]['bbox'] == [0, 0, 5, 5]
    assert tool.main([str(tmp_path / 'ann'), '--img-dir', str(tmp_path), '--classes', 'cat',
                      '--out', str(out)]) == 1
    assert "image 'a.jpg' not found" in capsys.readouterr().err


def test_yolo2coco_cli(tmp_path):
    tool = load_tool('dataset_converters/yolo2coco.py')
    (tmp_path / 'img').mkdir()
    (tmp_path / 'lab').mkdir()
    Image.new('RGB', (20, 10)).save(tmp_path / 'img/a.png')
    (tmp_path / 'lab/a.txt').write_text('1 0.5 0.5 0.5 0.5\n')
    (tmp_path / 'classes.txt').write_text('cat\ndog\n')
    out = tmp_path / 'yolo.json'
    assert tool.main([str(tmp_path / 'lab'), '--img-dir', str(tmp_path / 'img'),
                      '--classes', str(tmp_path / 'classes.txt'), '--out', str(out)]) == 0
    ann = json.loads(out.read_text())['annotations'][0]
    assert ann['category_id'] == 2 and ann['bbox'] == [5, 2.5, 10, 5]


def test_masks2seg_cli(tmp_path, capsys):
    tool = load_tool('dataset_converters/masks2seg.py')
    (tmp_path / 'img').mkdir()
    (tmp_path / 'mask').mkdir()
    Image.new('RGB', (4, 4)).save(tmp_path / 'img/a.jpg')
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / 'mask/a.png')
    base = [str(tmp_path / 'img'), str(tmp_path / 'mask'), str(tmp_path / 'out'),
            '--num-classes', '2']
    assert tool.main(base) == 1
    assert 'outside 0..2' in capsys.readouterr().err
    assert tool.main(base + ['--map', '7:2']) == 0
    assert np.asarray(Image.open(tmp_path / 'out/annotations/training/a.png')).max() == 2
