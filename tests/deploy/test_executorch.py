"""ExecuTorch export (XNNPACK delegate), checked in ExecuTorch's own runtime (the real package).

Lowering to XNNPACK takes seconds per delegated piece, so the default tests lower three small
networks once each: a one-stage MobileMamba through the tool's code, a small CNN RetinaNet with
a group-norm head and mmdet's FPN (every op of a head and neck must reach XNNPACK), and a small
CNN in int8 (the scan kept float in int8: tests/deploy/test_export_path.py, without lowering).
Whole quickstart models and B1 are slow-marked.
"""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('executorch.exir')
pytest.importorskip('mmdet')
from mmengine.config import Config, ConfigDict  # noqa: E402

from mmmobilemamba.apis import build_model  # noqa: E402
from mmmobilemamba.datasets.dummy_batch import make_dummy_batch, preprocess  # noqa: E402
from mmmobilemamba.deploy import (ExecuTorchModel, UnsupportedModelError,  # noqa: E402
                                  export_executorch, read_record)
from mmmobilemamba.deploy.executorch import ExecuTorchSession, set_threads  # noqa: E402
from deploy_checks import randomise_norms  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / 'configs' / 'quickstart'
MAX_REL = 1e-4


# ------------------------------------------- a MobileMamba backbone, through the tool's main
@pytest.fixture(scope='module')
def backbone_export(tmp_path_factory):
    """The quickstart RetinaNet's backbone, its first stage only (later stages are not built
    with ``out_indices=(0,)``), exported from a checkpoint and verified by the tool's code
    (in this process: the tool itself is its three lines)."""
    tmp = tmp_path_factory.mktemp('backbone')
    config = QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'
    model = randomise_norms(build_model(Config.fromfile(str(config))))
    checkpoint, out = tmp / 'detector.pth', tmp / 'backbone.pte'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    code, stdout = _tool([config, checkpoint, '--backbone-only', '--shape', '40', '64',
                          '--out', out, '--verify', '--cfg-options',
                          'model.backbone.out_indices=[0]'])
    return model, code, stdout, out


def _tool(args):
    """``tools/deployment/export_executorch.py ARGS`` in this process: (exit status, stdout)."""
    import contextlib
    import io

    from mmmobilemamba.deploy.cli import main
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main('executorch', 'export', [str(a) for a in args])
    return code, stdout.getvalue()


def test_tool_exports_the_backbone_and_verifies_it_in_executorch(backbone_export):
    model, code, stdout, out = backbone_export
    assert code == 0, stdout
    assert 'exported backbone (1, 3, 64, 64)' in stdout  # padded to a multiple of 64
    assert 'XNNPACK runs' in stdout
    meta = read_record(str(out))
    assert meta['runtime'] == 'executorch' and meta['precision'] == 'fp32'
    assert meta['max_rel_diff'] <= MAX_REL and meta['file_bytes'] == out.stat().st_size
    assert meta['versions']['executorch']
    # stage 0's 7x7 depthwise convs and inverse Haar transform in the forms XNNPACK runs fast
    assert meta['rewrites'] == {'RingDepthwiseConv2d': 2, 'SubpixelConvTranspose2d': 1,
                                'GraphScan.split_directions': 1}
    assert 'executorch form: 2 RingDepthwiseConv2d, 1 SubpixelConvTranspose2d' in stdout
    # the file runs in ExecuTorch's runtime with the checkpoint's weights
    x = torch.randn(1, 3, 64, 64)
    backbone = copy.deepcopy(model.backbone)
    backbone.out_indices = (0,)
    with torch.no_grad():
        expected = backbone(x)
    got = ExecuTorchSession(str(out)).run(x)
    assert len(got) == 1
    torch.testing.assert_close(got[0], expected[0], atol=1e-4, rtol=1e-4)


def test_delegation_report_counts_every_operator(backbone_export):
    _, code, stdout, out = backbone_export
    assert code == 0, stdout
    delegation = read_record(str(out))['delegation']
    assert delegation['backend'] == 'XnnpackBackend' and delegation['delegate_calls'] >= 1
    assert delegation['delegated_nodes'] + delegation['portable_nodes'] == \
        delegation['total_nodes'] > 0
    assert delegation['share'] == pytest.approx(
        delegation['delegated_nodes'] / delegation['total_nodes'])
    assert sum(delegation['portable_ops'].values()) == delegation['portable_nodes']
    assert sum(delegation['portable_by_module'].values()) == delegation['portable_nodes']
    # whatever form the scan takes, XNNPACK runs every convolution
    assert not [op for op in delegation['portable_ops'] if 'convolution' in op]


def test_tool_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    config = QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'
    cases = [
        (['--out', tmp_path / 'a.onnx'], 'must be a .pte file'),
        (['--out', tmp_path / 'b.pte', '--backbone-only', '--evaluate'], 'needs a detector'),
    ]
    for args, message in cases:
        code, _ = _tool([config, *args])
        assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # another file's record under the same stem is never replaced
    (tmp_path / 'model.onnx').write_bytes(b'onnx')
    record = tmp_path / 'model.json'
    record.write_text(json.dumps({'file': str(tmp_path / 'model.onnx')}))
    code, _ = _tool([config, '--out', tmp_path / 'model.pte'])
    assert code == 2 and 'is the record of model.onnx' in capsys.readouterr().err
    assert not (tmp_path / 'model.pte').exists()
    assert json.loads(record.read_text()) == {'file': str(tmp_path / 'model.onnx')}


def test_tool_says_what_to_install_without_executorch(tmp_path, monkeypatch, capsys):
    """``import executorch...`` failing, as without the package."""
    from mmmobilemamba.deploy.executorch import ExecuTorchRuntime
    for package in ('executorch', *ExecuTorchRuntime.packages):
        monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    code, _ = _tool([QUICKSTART / 'fpn_mobilemamba_demo-ade.py', '--out', tmp_path / 'x.pte'])
    assert code == 2 and 'pip install executorch==1.5.1' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------- a small CNN detector: heads and necks on XNNPACK
def _cnn_retinanet():
    """RetinaNet on an 8-channel ResNet-18, mmdet's FPN (nearest upsampling) and a head with
    group norm after each conv, as the quickstart RetinaNet has."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(ConfigDict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=32),
        backbone=dict(type='ResNet', depth=18, base_channels=8, out_indices=(1, 2, 3)),
        neck=dict(type='FPN', in_channels=[16, 32, 64], out_channels=16, num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=16, stacked_convs=1,
            feat_channels=16, norm_cfg=dict(type='GN', num_groups=4),
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=3,
                                  scales_per_octave=1, ratios=[1.0], strides=[8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                            target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True), loss_bbox=dict(type='L1Loss')),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=10)))
    return randomise_norms(model)


@pytest.fixture(scope='module')
def detector_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('detector')
    model = _cnn_retinanet()
    batch = make_dummy_batch('mmdet', (64, 96))
    inputs = preprocess(model, batch)['inputs']
    result = export_executorch(model, 'detector', inputs, str(tmp / 'det.pte'), verify=True)
    return model, batch, result


def test_detector_head_and_neck_run_entirely_on_xnnpack(detector_export):
    _, _, result = detector_export
    assert result.max_rel_diff <= MAX_REL
    assert result.output_names == ['cls_score0', 'cls_score1', 'cls_score2',
                                   'bbox_pred0', 'bbox_pred1', 'bbox_pred2']
    # group norm and nearest upsampling are rewritten with XNNPACK's operators
    assert result.delegation['portable_nodes'] == 0, result.delegation['portable_ops']
    assert result.delegation['delegate_calls'] == 1


def test_executorch_model_predicts_what_the_pytorch_model_predicts(detector_export):
    model, batch, result = detector_export
    with torch.no_grad():
        expected = model.test_step(copy.deepcopy(batch))[0].pred_instances
    runtime = ExecuTorchModel(model, result.file)
    got = runtime.test_step(copy.deepcopy(batch))[0].pred_instances
    assert len(got) == len(expected) > 0
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got.bboxes, expected.bboxes, atol=1e-2, rtol=1e-3)
    assert torch.equal(got.labels, expected.labels)
    with pytest.raises(ValueError, match='takes 64x96 inputs'):
        runtime.run(torch.zeros(1, 3, 64, 64))


def test_runtime_model_refuses_a_file_of_another_runtime(detector_export):
    from mmmobilemamba.deploy import OnnxRuntimeModel
    model, _, result = detector_export
    with pytest.raises(ValueError, match='exported for executorch'):
        OnnxRuntimeModel(model, result.file)


class SmallCNN(torch.nn.Module):
    """Convolutions, a residual add, group norm, a nearest upsampling and a head shared by two
    levels (as a dense head runs on every pyramid level): int8 in seconds."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.down = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.norm = torch.nn.GroupNorm(4, 32)
        self.head = torch.nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.norm(x + self.body(x)))
        coarse = torch.relu(self.down(x))
        x = x + torch.nn.functional.interpolate(coarse, scale_factor=2.0)
        return self.head(x), self.head(coarse)


def test_int8_executorch_export_is_smaller_close_and_delegated(tmp_path):
    model = randomise_norms(SmallCNN())
    generator = torch.Generator().manual_seed(0)
    inputs, *calibration = [torch.randn(1, 3, 32, 32, generator=generator) for _ in range(5)]
    result = export_executorch(model, 'backbone', inputs, str(tmp_path / 'cnn_int8.pte'),
                               verify=True, quantize='int8', calibration=calibration,
                               latency_rounds=2)
    quantization = result.quantization
    assert result.precision == 'int8' and quantization['calibration']['images'] == 4
    assert quantization['size_ratio'] < 0.6  # int8 weights; scales and the graph on top
    assert quantization['fp32_max_rel_diff'] <= MAX_REL
    assert result.snr_db > 10, result.snr_db  # int8 noise (random weights), not a broken graph
    assert result.delegation['portable_nodes'] == 0, result.delegation['portable_ops']
    assert not quantization['kept_float']  # no MobileMamba part in it
    assert set(quantization['latency_ms']) == {'fp32', 'int8', 'rounds', 'threads'}
    assert (tmp_path / 'cnn_int8.pte').stat().st_size == quantization['bytes']
    # (the shared head is int8 on both levels: its second use once had a float weight behind
    # int8 inputs, which XNNPACK refused to build when the program was loaded to verify it)


class SharedHead(torch.nn.Module):
    """A classifier with a detection prior's bias run on two levels of different scales."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.cls = torch.nn.Conv2d(16, 8, 3, padding=1)
        torch.nn.init.constant_(self.cls.bias, -4.6)  # log((1 - 0.01) / 0.01), RetinaNet's

    def forward(self, x):
        fine = torch.relu(self.stem(x))
        return self.cls(fine), self.cls(4 * torch.nn.functional.max_pool2d(fine, 2))


def test_int8_shared_convolution_keeps_its_bias_on_every_level(tmp_path):
    """XNNPACK's serialiser writes a bias once, quantised for its first user: the second level
    (another input scale) read it in the wrong units, -18 instead of -4.6."""
    from mmmobilemamba.deploy.executorch import unshare_conv_biases
    torch.manual_seed(0)
    model = SharedHead().eval()
    generator = torch.Generator().manual_seed(0)
    inputs, *calibration = [torch.randn(1, 3, 32, 32, generator=generator) for _ in range(5)]
    graph = torch.export.export(model, (inputs,), strict=False).module()
    assert unshare_conv_biases(graph) == 1
    assert all(torch.equal(a, b) for a, b in zip(graph(inputs), model(inputs)))

    result = export_executorch(model, 'backbone', inputs, str(tmp_path / 'shared.pte'),
                               verify=True, quantize='int8', calibration=calibration,
                               latency_rounds=1)
    outputs = ExecuTorchSession(result.file).run(inputs)
    for level, (ours, reference) in enumerate(zip(outputs, model(inputs))):
        noise = (ours - reference).pow(2).mean() / reference.pow(2).mean()
        assert -10 * torch.log10(noise) > 25, f'level {level}: SNR {-10 * torch.log10(noise)}'


def test_export_failure_names_the_module_and_writes_nothing(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # a branch on the data: not exportable

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 4, 3)
            self.odd = DataDependent()

        def forward(self, x):
            return (self.odd(self.stem(x)), )

    with pytest.raises(UnsupportedModelError, match=r'in odd \(DataDependent\)'):
        export_executorch(Backbone().eval(), 'backbone', torch.randn(1, 3, 16, 16),
                          str(tmp_path / 'x.pte'))
    assert list(tmp_path.iterdir()) == []


def test_thread_pool_is_not_resized_under_a_loaded_program(detector_export):
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count
    session = ExecuTorchSession(detector_export[2].file)
    other = 1 if _threadpool_get_thread_count() != 1 else 2
    with pytest.raises(RuntimeError, match='release them'):
        set_threads(other)
    del session


# ------------------------------------------------------------------ full size (slow)
@pytest.mark.slow
def test_b1_backbone_exports_at_224_and_verifies(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('b1'))
    result = export_executorch(backbone, 'backbone', torch.randn(1, 3, 224, 224),
                               str(tmp_path / 'b1.pte'), verify=True)
    assert result.max_rel_diff <= MAX_REL
    assert not [op for op in result.delegation['portable_ops'] if 'convolution' in op]


@pytest.mark.slow
@pytest.mark.parametrize('name,kind,shape', [
    ('retinanet_mobilemamba_demo-coco.py', 'detector', (128, 128)),
    ('fpn_mobilemamba_demo-ade.py', 'segmentor', (96, 128)),
    ('mask-rcnn_mobilemamba_demo-coco.py', 'detector', (128, 128)),
    ('ssdlite_mobilemamba_demo-coco.py', 'detector', (128, 128)),
])
def test_quickstart_models_export_and_verify(tmp_path, name, kind, shape):
    cfg = Config.fromfile(str(QUICKSTART / name))
    model = randomise_norms(build_model(cfg))
    scope = 'mmdet' if 'coco' in name else 'mmseg'
    inputs = preprocess(model, make_dummy_batch(scope, shape))['inputs']
    result = export_executorch(model, kind, inputs, str(tmp_path / 'model.pte'), verify=True)
    assert result.max_rel_diff <= MAX_REL
    # only the backbone may leave nodes to portable kernels: necks and heads are delegated
    outside = {m: n for m, n in result.delegation['portable_by_module'].items()
               if not m.startswith('backbone')}
    assert not outside, outside
