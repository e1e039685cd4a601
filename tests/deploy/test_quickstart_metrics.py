"""The exported quickstart RetinaNet and Semantic FPN, evaluated on the built-in data through
onnxruntime and ExecuTorch with mmdet's / mmseg's own post-processing, give the PyTorch models'
box mAP and mIoU (float32: image by image the same predictions; int8: within 1 point).

Slow: each model trains briefly first (minutes on a CPU).
"""
import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

from mmmobilemamba.apis import build_model  # noqa: E402
from mmmobilemamba.datasets.dummy_batch import make_dummy_batch, preprocess  # noqa: E402
from mmmobilemamba.deploy import export_network, model_class  # noqa: E402
from mmmobilemamba.deploy.data import calibration_images, evaluate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'tools'))
from tool_configs import run_tool  # noqa: E402

QUICKSTART = REPO / 'configs' / 'quickstart'
MAX_REL = 1e-4
SUFFIX = {'onnxruntime': '.onnx', 'executorch': '.pte'}


def _train(config: Path, data: Path, work_dir: Path, seg: bool) -> Path:
    overrides = [f'train_dataloader.dataset.data_root={data}', 'train_dataloader.num_workers=0',
                 'train_dataloader.persistent_workers=False', 'val_cfg=None',
                 'val_dataloader=None', 'val_evaluator=None',
                 'train_cfg.max_iters=40' if seg else 'train_cfg.max_epochs=3']
    proc = run_tool('train.py', [config, '--work-dir', work_dir, '--cfg-options', *overrides],
                    timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return work_dir / ('iter_40.pth' if seg else 'epoch_3.pth')


@pytest.fixture(scope='module', params=['retinanet_mobilemamba_demo-coco.py',
                                        'fpn_mobilemamba_demo-ade.py'])
def trained(request, tmp_path_factory):
    """A briefly trained quickstart model on freshly generated demo data, its config (test
    and training data pointed there) and its metrics and predictions in PyTorch."""
    from mmmobilemamba.datasets.synthetic import generate_ade_shapes, generate_coco_shapes
    name = request.param
    seg = 'ade' in name
    tmp = tmp_path_factory.mktemp(name.split('_')[0])
    data = tmp / 'data'
    (generate_ade_shapes if seg else generate_coco_shapes)(data, num_train=16, num_val=8)
    checkpoint = _train(QUICKSTART / name, data, tmp / 'work', seg)
    cfg = Config.fromfile(str(QUICKSTART / name))
    cfg.test_dataloader.dataset.data_root = str(data)
    cfg.train_dataloader.dataset.data_root = str(data)
    cfg.test_dataloader.update(num_workers=0, persistent_workers=False, batch_size=1)
    if not seg:
        cfg.test_evaluator.ann_file = str(data / 'annotations' / 'instances_val.json')
        cfg.model.test_cfg.score_thr = 0.0  # a briefly trained model scores low: keep all
    model = build_model(cfg, checkpoint)
    metrics, predictions = _evaluate(model.test_step, cfg)
    return dict(name=name, seg=seg, cfg=cfg, model=model, metrics=metrics,
                predictions=predictions, tmp=tmp,
                metric='mIoU' if seg else 'coco/bbox_mAP', points=1.0 if seg else 100.0)


def _evaluate(test_step, cfg):
    """The metrics over the test set, and each image's prediction."""
    predictions = []

    def step(batch):
        samples = test_step(batch)
        predictions.extend(s.pred_sem_seg.data if 'pred_sem_seg' in s
                           else s.pred_instances.clone() for s in samples)
        return samples

    return evaluate(step, cfg)[0], predictions


@pytest.mark.slow
@pytest.mark.parametrize('runtime', ['onnxruntime', 'executorch'])
@pytest.mark.parametrize('precision', ['fp32', 'int8'])
def test_exported_quickstart_model_gives_the_pytorch_metric(trained, runtime, precision):
    if runtime == 'executorch':
        pytest.importorskip('executorch.exir')
    seg, cfg, model = trained['seg'], trained['cfg'], trained['model']
    shape = (160, 160) if seg else (384, 384)  # what the test pipeline resizes every image to
    inputs = preprocess(model, make_dummy_batch('mmseg' if seg else 'mmdet', shape))['inputs']
    calibration = None
    if precision == 'int8':
        calibration, _ = calibration_images(cfg, model, 8, shape)
    out = trained['tmp'] / f'{runtime}_{precision}{SUFFIX[runtime]}'
    result = export_network(copy.deepcopy(model), 'segmentor' if seg else 'detector', inputs,
                            str(out), runtime=runtime, verify=True,
                            quantize=None if precision == 'fp32' else precision,
                            calibration=calibration, latency_rounds=2)
    exported, exported_preds = _evaluate(model_class(runtime)(model, str(out)).test_step, cfg)
    ours = trained['metrics'][trained['metric']]
    drop = (ours - exported[trained['metric']]) * trained['points']
    if precision == 'int8':
        assert drop <= 1.0, (exported, trained['metrics'])
        return
    assert result.max_rel_diff <= MAX_REL
    assert abs(drop) <= (0.1 if seg else 0.2), (exported, trained['metrics'])
    # image by image, the same predictions
    for a, b in zip(exported_preds, trained['predictions']):
        if seg:
            assert (a == b).float().mean() > 0.999
        else:
            assert len(a) == len(b) > 0
            torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-3)
            torch.testing.assert_close(a.bboxes, b.bboxes, atol=0.05, rtol=1e-3)
            assert torch.equal(a.labels, b.labels)
