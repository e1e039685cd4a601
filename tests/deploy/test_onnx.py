"""ONNX export, checked with onnxruntime (the real package, CPU).

Each kind exports and reproduces PyTorch within 1e-4 (relative); the exported quickstart
models, run through onnxruntime with mmdet's / mmseg's own post-processing, give the metrics
of the PyTorch models on the built-in data.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')
pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

from mmmobilemamba.analysis.dummy_batch import make_dummy_batch, preprocess  # noqa: E402
from mmmobilemamba.apis import build_model  # noqa: E402
from mmmobilemamba.deploy import OnnxRuntimeModel, export_onnx  # noqa: E402
from mmmobilemamba.models import MobileMamba  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'tools'))
from deploy_checks import randomise_norms  # noqa: E402
from tiny_models import TINY_ARCH  # noqa: E402
from tool_configs import run_tool  # noqa: E402

QUICKSTART = REPO / 'configs' / 'quickstart'
MAX_REL = 1e-4


def _model_and_inputs(config: Path, shape):
    cfg = Config.fromfile(str(config))
    model = randomise_norms(build_model(cfg))
    scope = 'mmdet' if 'coco' in config.name else 'mmseg'
    return cfg, model, preprocess(model, make_dummy_batch(scope, shape))['inputs']


@pytest.mark.parametrize('name,kind,shape', [
    ('retinanet_mobilemamba_demo-coco.py', 'detector', (128, 128)),
    ('fpn_mobilemamba_demo-ade.py', 'segmentor', (96, 128)),
    pytest.param('mask-rcnn_mobilemamba_demo-coco.py', 'detector', (128, 128),
                 marks=pytest.mark.slow),
    pytest.param('ssdlite_mobilemamba_demo-coco.py', 'detector', (128, 128),
                 marks=pytest.mark.slow),
    pytest.param('deeplabv3_mobilemamba_demo-ade.py', 'segmentor', (96, 128),
                 marks=pytest.mark.slow),
    pytest.param('pspnet_mobilemamba_demo-ade.py', 'segmentor', (96, 128),
                 marks=pytest.mark.slow),
])
def test_detectors_and_segmentors_export_and_verify(tmp_path, name, kind, shape):
    _, model, inputs = _model_and_inputs(QUICKSTART / name, shape)
    result = export_onnx(model, kind, inputs, str(tmp_path / 'model.onnx'), verify=True)
    assert result.max_rel_diff <= MAX_REL and result.max_abs_diff < 1e-3
    meta = json.loads((tmp_path / 'model.json').read_text())
    assert meta['kind'] == kind and meta['input_shape'] == list(inputs.shape)
    assert meta['output_names'] == result.output_names
    if kind == 'segmentor':
        assert result.output_names == ['seg_logits']
    elif 'mask-rcnn' in name:  # features and RPN outputs; the RoI heads run in PyTorch
        assert result.output_names[0] == 'feat0' and 'rpn_reg4' in result.output_names
    else:
        assert result.output_names[0] == 'cls_score0' and 'bbox_pred0' in result.output_names


@pytest.mark.parametrize('arch', [TINY_ARCH, pytest.param('t2', marks=pytest.mark.slow)])
def test_backbone_exports_deploy_folded_and_verifies(tmp_path, arch):
    backbone = randomise_norms(MobileMamba(arch))
    inputs = torch.randn(1, 3, 96, 160)
    result = export_onnx(backbone, 'backbone', inputs, str(tmp_path / 'backbone.onnx'),
                         verify=True)
    assert result.output_names == ['stage0', 'stage1', 'stage2']
    assert result.max_rel_diff <= MAX_REL
    assert not getattr(backbone, 'deployed', False)  # the model given is left as it was


def test_runtime_model_refuses_another_input_size(tmp_path):
    _, model, inputs = _model_and_inputs(QUICKSTART / 'fpn_mobilemamba_demo-ade.py', (64, 64))
    export_onnx(model, 'segmentor', inputs, str(tmp_path / 'seg.onnx'))
    runtime = OnnxRuntimeModel(model, str(tmp_path / 'seg.onnx'))
    with pytest.raises(ValueError, match='static shape'):
        runtime.run(torch.zeros(1, 3, 96, 96))


def _assert_computes(onnx_file, module: torch.nn.Module, shape) -> None:
    """onnxruntime on ``onnx_file`` gives ``module``'s outputs on a random image of ``shape``."""
    import onnxruntime
    x = torch.randn(1, 3, *shape)
    out_ort = onnxruntime.InferenceSession(str(onnx_file)).run(None, {'input': x.numpy()})
    with torch.no_grad():
        ref = module(x)
    for a, b in zip(out_ort, ref):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4)


def test_tool_exports_the_backbone_of_a_checkpoint(tmp_path):
    config = QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'
    _, model, _ = _model_and_inputs(config, (64, 64))
    checkpoint = tmp_path / 'detector.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    out = tmp_path / 'backbone.onnx'
    proc = run_tool('deployment/export_onnx.py', [config, checkpoint, '--backbone-only',
                                                   '--shape', '64', '96', '--out', out,
                                                   '--verify'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'exported backbone (1, 3, 64, 128)' in proc.stdout  # padded to a multiple of 64
    meta = json.loads(out.with_suffix('.json').read_text())
    assert meta['checkpoint'] == str(checkpoint) and meta['max_rel_diff'] <= MAX_REL
    # the weights are the checkpoint's: the exported backbone computes what the model's does
    _assert_computes(out, model.backbone, (64, 128))


def _export_backbone_of(tmp_path, keep):
    """Export the quickstart RetinaNet's backbone with --backbone-only from a checkpoint of
    the tensors ``keep(model)`` returns; the model, the tool's process and the ONNX file."""
    config = QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'
    _, model, _ = _model_and_inputs(config, (64, 64))
    checkpoint, out = tmp_path / 'weights.pth', tmp_path / 'backbone.onnx'
    torch.save({'state_dict': keep(model)}, checkpoint)
    proc = run_tool('deployment/export_onnx.py', [config, checkpoint, '--backbone-only',
                                                   '--shape', '64', '64', '--out', out])
    return model, proc, out


@pytest.mark.parametrize('prefix', ['backbone.', ''], ids=['backbone-keys', 'bare-keys'])
def test_tool_exports_a_checkpoint_of_the_backbone_alone(tmp_path, prefix):
    """--backbone-only needs the backbone's tensors only: a file without the neck and heads
    (under ``backbone.`` or bare) exports, with its weights."""
    model, proc, out = _export_backbone_of(
        tmp_path, lambda m: {prefix + k: v for k, v in m.backbone.state_dict().items()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'exported backbone (1, 3, 64, 64)' in proc.stdout
    _assert_computes(out, model.backbone, (64, 64))


@pytest.mark.parametrize('drop,message', [
    ('backbone.', 'has no tensor that this MobileMamba expects'),  # neck and heads only
    ('backbone.stages.2.', 'lacks'),  # the backbone's last stage missing
], ids=['no-backbone', 'partial-backbone'])
def test_tool_refuses_a_checkpoint_without_the_backbone_for_backbone_only(tmp_path, drop,
                                                                          message):
    _, proc, out = _export_backbone_of(
        tmp_path, lambda m: {k: v for k, v in m.state_dict().items() if not k.startswith(drop)})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_tool_reports_a_checkpoint_that_does_not_fit(tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.x.weight': torch.zeros(1)}}, checkpoint)
    proc = run_tool('deployment/export_onnx.py', [
        QUICKSTART / 'fpn_mobilemamba_demo-ade.py', checkpoint, '--out', tmp_path / 'x.onnx'])
    assert proc.returncode == 2 and 'does not fit the model' in proc.stderr

# The metrics of the exported quickstart models (both runtimes, float32 and int8):
# tests/deploy/test_quickstart_metrics.py
