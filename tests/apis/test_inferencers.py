"""mmdet's and mmseg's own clients on our configs, as users reach a trained model.

``DetInferencer`` / ``init_detector`` + ``inference_detector`` and ``MMSegInferencer`` /
``init_model`` + ``inference_model`` take every config we ship and the config
``tools/train.py`` writes into its work dir, with that run's checkpoint; their predictions
equal those ``tools/demo.py`` saves for the same image.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from PIL import Image  # noqa: E402

import mmmobilemamba  # noqa: E402,F401  (what the configs' custom_imports import)
from mmmobilemamba.datasets.synthetic import generate_ade_shapes, generate_coco_shapes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'tools'))
from tool_configs import run_tool  # noqa: E402

QUICKSTART = sorted(REPO.glob('configs/quickstart/*.py'))
SHIPPED = sorted([*REPO.glob('configs/*.py'), *REPO.glob('configs/mobilemamba/*.py'),
                  *REPO.glob('configs/custom/*.py')])


def _is_seg(config: Path) -> bool:
    return 'ade' in config.name or config.name.startswith(('fpn', 'deeplabv3', 'pspnet'))


def _image(path: Path, size=(96, 72)) -> Path:
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype('uint8')).save(path)
    return path


def _detections(config, weights, image):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=str(config), weights=weights and str(weights),
                               device='cpu', show_progress=False)
    return inferencer(str(image), no_save_pred=True)['predictions'][0]


def _label_map(config, weights, image):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=str(config), weights=weights and str(weights),
                                 device='cpu')
    return inferencer(str(image))['predictions']


# ------------------------------------------------------------- every config we ship
def _inferencer_predicts(config: Path, tmp_path: Path) -> None:
    """The config's inferencer (random weights) predicts on a 96x72 image."""
    image = _image(tmp_path / 'image.jpg')
    if _is_seg(config):
        assert _label_map(config, None, image).shape == (72, 96)
    else:
        prediction = _detections(config, None, image)
        assert len(prediction['labels']) == len(prediction['scores']) == len(prediction['bboxes'])


@pytest.mark.parametrize('config', QUICKSTART, ids=lambda p: p.name)
def test_inferencers_take_the_quickstart_configs(config, tmp_path):
    _inferencer_predicts(config, tmp_path)


@pytest.mark.slow  # B1/B4 models at 1333x800 or 2048x512
@pytest.mark.parametrize('config', SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_inferencers_take_the_paper_short_and_custom_configs(config, tmp_path):
    _inferencer_predicts(config, tmp_path)


# ---------------------------------------- a trained quickstart model, from its work dir
@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    generate_coco_shapes(root / 'coco', num_train=2, num_val=1, image_size=64)
    generate_ade_shapes(root / 'ade', num_train=2, num_val=1, image_size=64)
    return root


def _train(config: Path, data: Path, work_dir: Path) -> tuple:
    """tools/train.py on the tiny data: (the config it dumped, its checkpoint)."""
    seg = _is_seg(config)
    overrides = [f'train_dataloader.dataset.data_root={data / ("ade" if seg else "coco")}',
                 'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
                 'train_dataloader.persistent_workers=False',
                 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    overrides.append('train_cfg.max_iters=2' if seg else 'train_cfg.max_epochs=1')
    if not seg:  # keep every detection: an untrained model scores low
        key = 'rcnn.score_thr' if 'mask-rcnn' in config.name else 'score_thr'
        overrides.append(f'model.test_cfg.{key}=0.0')
    proc = run_tool('train.py', [config, '--work-dir', work_dir, '--cfg-options', *overrides],
                    timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    checkpoint = work_dir / ('iter_2.pth' if seg else 'epoch_1.pth')
    return work_dir / config.name, checkpoint


@pytest.mark.slow
@pytest.mark.parametrize('config', QUICKSTART, ids=lambda p: p.name)
def test_clients_and_demo_agree_on_a_trained_work_dir(config, tiny_data, tmp_path):
    work_config, checkpoint = _train(config, tiny_data, tmp_path / 'work')
    image = _image(tmp_path / 'image.jpg')
    proc = run_tool('demo.py', [image, work_config, checkpoint, '--out-dir', tmp_path / 'demo',
                                '--score-thr', '0.0'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    if _is_seg(config):
        from mmseg.apis import inference_model, init_model
        by_inferencer = _label_map(work_config, checkpoint, image)
        model = init_model(str(work_config), str(checkpoint), device='cpu')
        by_api = inference_model(model, str(image)).pred_sem_seg.data[0].numpy()
        by_demo = np.asarray(Image.open(tmp_path / 'demo' / 'preds' / 'image.png'))
        assert np.array_equal(by_inferencer, by_api) and np.array_equal(by_inferencer, by_demo)
        return
    from mmdet.apis import inference_detector, init_detector
    by_inferencer = _detections(work_config, checkpoint, image)
    model = init_detector(str(work_config), str(checkpoint), device='cpu')
    pred = inference_detector(model, str(image)).pred_instances
    by_demo = json.loads((tmp_path / 'demo' / 'preds' / 'image.json').read_text())
    assert len(by_inferencer['scores']) > 0
    for key, api in (('labels', pred.labels), ('scores', pred.scores), ('bboxes', pred.bboxes)):
        expected = torch.as_tensor(by_inferencer[key], dtype=api.dtype)
        torch.testing.assert_close(api, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.as_tensor(by_demo[key], dtype=api.dtype), expected,
                                   atol=1e-4, rtol=1e-4)
