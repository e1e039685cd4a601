"""tools/test.py and tools/train.py with the authors' released files as they are.

Stand-ins for the released files: every key and shape of the authors' models
(``tests/data/official_downstream_models.json``), random values, mmengine's checkpoint format.
The paper configs run on the built-in data, with the data settings given on the command line
as a user would.
"""
import json
from pathlib import Path

import pytest
import torch
from tool_configs import REPO, run_tool

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from mmmobilemamba.datasets.synthetic import (DEMO_CLASSES, generate_ade_shapes,  # noqa: E402
                                              generate_coco_shapes)

OFFICIAL = json.loads((REPO / 'tests' / 'data' / 'official_downstream_models.json').read_text())
RETINANET = 'configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py'
SEM_FPN = 'configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py'


def write_released_like(model: str, path: Path, seed: int = 0) -> Path:
    """A file with the keys and shapes of the authors' released ``model``, random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in OFFICIAL[model]['state_dict'].items():
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(0)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = 0.02 * torch.randn(shape, generator=generator)
    torch.save({'meta': {'epoch': 12}, 'state_dict': state}, path)
    return path


def coco_shapes_with_coco_categories(root: Path, num_val: int = 2) -> Path:
    """The built-in COCO shapes, categories named as COCO's 80 (the released detectors'
    classes): shape k is labelled with COCO class k."""
    from mmdet.datasets import CocoDataset
    generate_coco_shapes(root, num_train=2, num_val=num_val, image_size=96)
    names = CocoDataset.METAINFO['classes']
    for split in ('train', 'val'):
        ann = root / 'annotations' / f'instances_{split}.json'
        coco = json.loads(ann.read_text())
        old = {c['id']: c['name'] for c in coco['categories']}
        assert [old[i] for i in sorted(old)] == list(DEMO_CLASSES)
        coco['categories'] = [dict(id=i + 1, name=name, supercategory='coco')
                              for i, name in enumerate(names)]
        ann.write_text(json.dumps(coco))
    return root


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_tools_test_evaluates_a_released_detector_as_it_is(tmp_path):
    root = coco_shapes_with_coco_categories(tmp_path / 'coco')
    checkpoint = write_released_like('retinanet_b1', tmp_path / 'retinanet.pth')
    log = _ok(run_tool('test.py', [
        RETINANET, checkpoint, '--work-dir', tmp_path / 'work', '--cfg-options',
        f'test_dataloader.dataset.data_root={root}/',
        'test_dataloader.dataset.ann_file=annotations/instances_val.json',
        'test_dataloader.dataset.data_prefix.img=val/',
        'test_dataloader.dataset.pipeline.1.scale=(160,160)',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        f'test_evaluator.ann_file={root}/annotations/instances_val.json',
        'model.test_cfg.score_thr=0.0'], timeout=600))
    assert "mapped from the authors' layout" in log
    assert 'every tensor matches the model' in log
    assert 'Evaluation results: coco/bbox_mAP:' in log


@pytest.mark.slow
def test_tools_test_evaluates_a_released_segmentor_as_it_is(tmp_path):
    root = tmp_path / 'ade'
    generate_ade_shapes(root, num_train=1, num_val=2, image_size=96)
    checkpoint = write_released_like('sem_fpn_b4', tmp_path / 'fpn.pth')
    log = _ok(run_tool('test.py', [
        SEM_FPN, checkpoint, '--work-dir', tmp_path / 'work', '--cfg-options',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.dataset.pipeline.1.scale=(256,256)',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'],
        timeout=600))
    assert "mapped from the authors' layout" in log
    assert 'every tensor matches the model' in log
    assert 'Evaluation results: aAcc:' in log and 'mIoU:' in log


@pytest.mark.slow
def test_tools_test_stops_on_a_released_file_of_another_model(tmp_path):
    """The Mask R-CNN file given to the RetinaNet config: nothing runs, the keys are listed."""
    root = coco_shapes_with_coco_categories(tmp_path / 'coco', num_val=1)
    checkpoint = write_released_like('mask_rcnn_b1', tmp_path / 'maskrcnn.pth')
    proc = run_tool('test.py', [
        RETINANET, checkpoint, '--work-dir', tmp_path / 'work', '--cfg-options',
        f'test_dataloader.dataset.data_root={root}/',
        'test_dataloader.dataset.ann_file=annotations/instances_val.json',
        'test_dataloader.dataset.data_prefix.img=val/',
        f'test_evaluator.ann_file={root}/annotations/instances_val.json'], timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'does not fit this model, nothing was run' in proc.stderr
    assert 'model tensors not in the checkpoint' in proc.stderr and 'bbox_head.cls_convs.0' in \
        proc.stderr
    assert 'checkpoint tensors unused by the model' in proc.stderr and 'rpn_head' in proc.stderr


@pytest.mark.slow
def test_train_fine_tunes_a_released_detector_with_other_classes(tmp_path):
    """load_from = the authors' RetinaNet (80 classes) for a 5-class set: retina_cls starts
    fresh, everything else loads, and training runs."""
    root = tmp_path / 'coco'
    generate_coco_shapes(root, num_train=2, num_val=1, image_size=96)
    checkpoint = write_released_like('retinanet_b1', tmp_path / 'retinanet.pth')
    config = tmp_path / 'finetune.py'
    config.write_text(
        f"_base_ = {str(REPO / RETINANET)!r}\n"
        f"load_from = {str(checkpoint)!r}\n"
        f"classes = {DEMO_CLASSES!r}\n"
        "model = dict(bbox_head=dict(num_classes=len(classes)))\n"
        "pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),\n"
        "            dict(type='Resize', scale=(128, 128), keep_ratio=True), dict(type='PackDetInputs')]\n"
        f"train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        f"    dataset=dict(data_root={str(root)!r}, metainfo=dict(classes=classes),\n"
        "                 ann_file='annotations/instances_train.json',\n"
        "                 data_prefix=dict(img='train/'), pipeline=pipeline))\n"
        "train_cfg = dict(max_epochs=1, val_interval=10)\n"
        "val_cfg = None\nval_dataloader = None\nval_evaluator = None\n"
        "test_cfg = None\ntest_dataloader = None\ntest_evaluator = None\n")
    log = _ok(run_tool('train.py', [config, '--work-dir', tmp_path / 'work'], timeout=600))
    assert 'its ImageNet init_cfg checkpoint' in log  # not read: load_from brings the backbone
    assert 'skipped bbox_head.retina_cls.weight' in log and 'num_classes differs' in log
    trained = torch.load(tmp_path / 'work' / 'epoch_1.pth', weights_only=True)['state_dict']
    assert trained['bbox_head.retina_cls.weight'].shape[0] == 9 * len(DEMO_CLASSES)


@pytest.mark.slow
def test_inferencers_take_the_released_files(tmp_path):
    """mmdet's DetInferencer and mmseg's MMSegInferencer, as users call them."""
    import numpy as np
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer
    from PIL import Image

    import mmmobilemamba  # noqa: F401  (registers the backbone; configs import it too)
    image = tmp_path / 'image.jpg'
    Image.fromarray((np.random.RandomState(0).rand(120, 160, 3) * 255).astype('uint8')).save(image)
    detector = DetInferencer(model=str(REPO / RETINANET), device='cpu', show_progress=False,
                             weights=str(write_released_like('retinanet_b1', tmp_path / 'r.pth')))
    prediction = detector(str(image), no_save_pred=True)['predictions'][0]
    assert len(prediction['bboxes']) == len(prediction['scores']) == 100
    segmentor = MMSegInferencer(model=str(REPO / SEM_FPN), device='cpu',
                                weights=str(write_released_like('sem_fpn_b4', tmp_path / 'f.pth')))
    assert segmentor(str(image))['predictions'].shape == (120, 160)
