"""The parts of the export path both runtimes share: records, calibration data, the parts kept
float in int8, the application's preprocessing, the rewrites for XNNPACK, onnxruntime int8."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

from mmmobilemamba.apis import build_model  # noqa: E402
from mmmobilemamba.datasets.dummy_batch import make_dummy_batch, preprocess  # noqa: E402
from mmmobilemamba.deploy import (FloatParts, app_preprocessing, export_onnx,  # noqa: E402
                                  read_record)
from mmmobilemamba.deploy.data import calibration_images, fit_to_shape  # noqa: E402
from mmmobilemamba.deploy.record import check_record_slot  # noqa: E402
from mmmobilemamba.deploy import prepare_for_export  # noqa: E402
from mmmobilemamba.deploy.xnnpack_rewrites import (RingDepthwiseConv2d,  # noqa: E402
                                                    SubpixelConvTranspose2d,
                                                    group_norm_decomposed,
                                                    native_group_norm_decomposed,
                                                    nearest_resize_decomposed,
                                                    rewrite_modules_for_xnnpack)
from mmmobilemamba.models import MobileMamba  # noqa: E402
from mmmobilemamba.models.layers import InferenceConv2d  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests'))
from tiny_models import TINY_ARCH  # noqa: E402

QUICKSTART = REPO / 'configs' / 'quickstart'


# ------------------------------------------------------------------ XNNPACK rewrites
@pytest.mark.parametrize('size', [(10, 14), (15, 7), (10, 21), (20, 28), (9, 14), (7, 10),
                                  (3, 5), (8, 12)])
def test_nearest_resize_rewrite_is_exact(size):
    """Integer factors and others (mmseg's FPN resizes a 3x3 map to 5x5 at 160x160)."""
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(nearest_resize_decomposed(x, size, None),
                               F.interpolate(x, size=size, mode='nearest'), rtol=0, atol=0)
    for scales in ([2.0, 3.0], [1.5, 2.5], [0.6, 1.7]):
        torch.testing.assert_close(nearest_resize_decomposed(x, None, scales),
                                   F.interpolate(x, scale_factor=scales, mode='nearest'),
                                   rtol=0, atol=0)


def test_group_norm_rewrite_computes_group_norm():
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    norm = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        torch.testing.assert_close(group_norm_decomposed(x, 4, norm.weight, norm.bias, 1e-5),
                                   norm(x), atol=1e-5, rtol=1e-5)
        expected = torch.ops.aten.native_group_norm(x, norm.weight, norm.bias, 2, 8, 35, 4, 1e-5)
        got = native_group_norm_decomposed(x, norm.weight, norm.bias, 2, 8, 35, 4, 1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('kernel', [7, 9, 11])
@pytest.mark.parametrize('stride', [1, 2])
def test_wide_depthwise_conv_as_rings_computes_the_conv(kernel, stride):
    torch.manual_seed(kernel + stride)
    conv = torch.nn.Conv2d(6, 6, kernel, stride, kernel // 2, groups=6, bias=True)
    ring = RingDepthwiseConv2d(conv)
    # every piece within XNNPACK's largest depthwise kernel, all taps used once
    pieces = [ring.centre] + list(ring.rings)
    assert all(p.shape[-2] * p.shape[-1] <= 25 for p in pieces)
    assert sum(p.shape[-2] * p.shape[-1] for p in pieces) == kernel * kernel
    x = torch.randn(2, 6, 19, 14)
    with torch.no_grad():
        torch.testing.assert_close(ring(x), conv(x), atol=1e-5, rtol=1e-5)


def test_wide_depthwise_rewrite_keeps_the_activation_of_an_inference_conv():
    conv = InferenceConv2d(8, 8, 7, padding=3, groups=8, activation='relu').eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(RingDepthwiseConv2d(conv)(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('conv', [
    torch.nn.Conv2d(6, 6, 5, padding=2, groups=6),      # XNNPACK's own depthwise kernel
    torch.nn.Conv2d(6, 6, 13, padding=6, groups=6),     # a ring's rows would not fit one
    torch.nn.Conv2d(6, 6, 7, padding=2, groups=6),      # not 'same' padding
    torch.nn.Conv2d(6, 12, 7, padding=3, groups=6),     # a channel multiplier
    torch.nn.Conv2d(6, 6, (7, 5), padding=(3, 2), groups=6),
    torch.nn.Conv2d(6, 6, 7, padding=3, dilation=2, groups=6),
])
def test_wide_depthwise_rewrite_leaves_other_convs(conv):
    assert not RingDepthwiseConv2d.applies_to(conv)
    with pytest.raises(ValueError, match='depthwise'):
        RingDepthwiseConv2d(conv)


@pytest.mark.parametrize('channels_in,channels_out,groups,stride', [
    (16, 4, 4, 2), (8, 6, 2, 3), (12, 12, 12, 2)])
def test_non_overlapping_transposed_conv_as_subpixel_conv(channels_in, channels_out, groups,
                                                          stride):
    deconv = torch.nn.ConvTranspose2d(channels_in, channels_out, stride, stride, groups=groups)
    x = torch.randn(2, channels_in, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(SubpixelConvTranspose2d(deconv)(x), deconv(x),
                                   atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('deconv', [
    torch.nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=2),   # overlapping taps
    torch.nn.ConvTranspose2d(8, 8, 2, 2),                # one group: XNNPACK's is not slow
    torch.nn.ConvTranspose2d(8, 8, 2, 2, output_padding=1, dilation=2, groups=2),
])
def test_subpixel_rewrite_leaves_other_transposed_convs(deconv):
    assert not SubpixelConvTranspose2d.applies_to(deconv)
    with pytest.raises(ValueError, match='transposed conv with stride equal'):
        SubpixelConvTranspose2d(deconv)


def test_xnnpack_module_rewrite_keeps_mobilemamba_outputs():
    torch.manual_seed(0)
    model = prepare_for_export(MobileMamba(arch=TINY_ARCH))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        replaced = rewrite_modules_for_xnnpack(model)
        got = model(x)
    # stage 0's 7x7 local and sub-band convs; every stage's inverse Haar transform
    assert replaced == {'RingDepthwiseConv2d': 2, 'SubpixelConvTranspose2d': 3,
                        'GraphScan.split_directions': 3}
    assert set(rewrite_modules_for_xnnpack(model).values()) == {0}
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- records
def test_record_of_another_file_is_never_replaced(tmp_path):
    (tmp_path / 'model.json').write_text(json.dumps({'file': 'model.onnx'}))
    check_record_slot(str(tmp_path / 'model.onnx'))  # its own record: may be refreshed
    with pytest.raises(ValueError, match='is the record of model.onnx'):
        check_record_slot(str(tmp_path / 'model.pte'))
    (tmp_path / 'notes.json').write_text('my notes')
    with pytest.raises(ValueError, match='not an export record'):
        check_record_slot(str(tmp_path / 'notes.onnx'))


def test_records_written_before_executorch_still_load(tmp_path):
    (tmp_path / 'old.json').write_text(json.dumps(
        {'onnx_file': str(tmp_path / 'old.onnx'), 'kind': 'segmentor',
         'input_shape': [1, 3, 64, 64], 'output_names': ['seg_logits']}))
    meta = read_record(str(tmp_path / 'old.onnx'))
    assert meta['runtime'] == 'onnxruntime' and meta['precision'] == 'fp32'
    with pytest.raises(FileNotFoundError, match='export again'):
        read_record(str(tmp_path / 'missing.pte'))


# ---------------------------------------------------------- the parts kept float
SS2D = 'mmmobilemamba.models.layers.ss2d.SS2D'
WTE = 'mmmobilemamba.models.layers.wte_mamba.WTEMamba'


def test_float_parts_follow_the_innermost_module_and_quantise_convolutions():
    in_scan = [('b', 'MobileMamba'), ('b.wte', WTE), ('b.wte.ss2d', SS2D)]
    in_wavelet = [('b', 'MobileMamba'), ('b.wte', WTE)]
    scan_only = FloatParts(['scan'])
    assert scan_only.part_of(in_scan, 'aten.mul.Tensor', 'mul') == 'scan'
    assert scan_only.part_of(in_scan + [('b.wte.ss2d.in_proj', 'Conv2d')],
                             'aten.conv2d.default', 'conv') is None
    assert scan_only.part_of(in_wavelet, 'aten.add.Tensor', 'add') is None
    both = FloatParts(['scan', 'wavelet'])
    assert both.part_of(in_wavelet, 'aten.add.Tensor', 'add') == 'wavelet'
    assert FloatParts([]).part_of(in_scan, 'Mul', 'mul') is None
    assert scan_only.report() == {'scan': dict(what=scan_only.report()['scan']['what'],
                                               nodes=1, modules=1)}
    with pytest.raises(ValueError, match='unknown float part'):
        FloatParts(['softmax'])


def test_executorch_quantiser_leaves_the_scan_float():
    """The XNNPACK quantiser annotates SS2D's convolutions, and nothing else in SS2D (its
    concatenation annotator ignores the filter function: the bug this guards against)."""
    pytest.importorskip('executorch.backends.xnnpack.quantizer.xnnpack_quantizer')
    from mmmobilemamba.deploy.executorch import xnnpack_quantizer
    from mmmobilemamba.deploy.network import ExportedNetwork, prepare_for_export

    backbone = prepare_for_export(MobileMamba(TINY_ARCH, out_indices=(0,)))
    rewrite_modules_for_xnnpack(backbone)  # ExecuTorch's form: the scan's linear layers too
    network = ExportedNetwork(backbone, 'backbone', (32, 32)).eval()

    def annotated_in_ss2d(parts):
        graph = torch.export.export(network, (torch.randn(1, 3, 32, 32),)).module()
        quantizer = xnnpack_quantizer(graph, FloatParts(parts))
        quantizer.annotate(quantizer.transform_for_annotation(graph))
        kinds = set()
        for node in graph.graph.nodes:
            stack = [cls for _, cls in (node.meta.get('nn_module_stack') or {}).values()]
            if 'quantization_annotation' in node.meta and any('SS2D' in str(c) for c in stack):
                kinds.add('conv' if 'conv' in str(node.target) else 'other')
        return kinds

    assert annotated_in_ss2d(['scan']) == {'conv'}
    assert annotated_in_ss2d([]) == {'conv', 'other'}


def test_onnx_int8_excludes_the_scan_and_is_smaller(tmp_path):
    pytest.importorskip('onnxruntime')
    import onnx
    torch.manual_seed(0)
    backbone = MobileMamba(TINY_ARCH, out_indices=(0,)).eval()
    x = torch.randn(1, 3, 32, 32)
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    counts = {}
    for parts in (['scan'], []):
        out = tmp_path / f'int8_{len(parts)}.onnx'
        result = export_onnx(backbone, 'backbone', x, str(out), verify=True, quantize='int8',
                             calibration=calibration, float_parts=parts, latency_rounds=2)
        assert result.snr_db > 15, result.snr_db
        assert result.quantization['size_ratio'] < 0.7
        counts[len(parts)] = sum(n.op_type == 'QuantizeLinear'
                                 for n in onnx.load(str(out)).graph.node)
        kept = result.quantization['kept_float']
        assert (kept['scan']['nodes'] > 0) if parts else not kept
    assert counts[1] < counts[0]  # the scan's nodes are not quantised


# ------------------------------------------------------------ the config's data
def test_calibration_images_come_from_the_training_split(tmp_path):
    from mmmobilemamba.datasets.synthetic import generate_coco_shapes
    generate_coco_shapes(tmp_path / 'coco', num_train=3, num_val=1)
    cfg = Config.fromfile(str(QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'coco')
    model = build_model(cfg)
    images, source = calibration_images(cfg, model, 5, (384, 448))
    assert len(images) == 3 and 'training images' in source
    assert all(image.shape == (1, 3, 384, 448) for image in images)
    assert images[0][..., 384:].abs().max() == 0  # padded at the right with zeros
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nothing')
    with pytest.raises(FileNotFoundError, match='generate_demo_data'):
        calibration_images(cfg, model, 2, (384, 384))


def test_fit_to_shape_shrinks_then_pads():
    image = torch.ones(1, 3, 100, 50)
    fitted = fit_to_shape(image, (64, 64))
    assert fitted.shape == (1, 3, 64, 64)
    assert fitted[..., :64, :32].min() == 1 and fitted[..., 32:].max() == 0


def test_app_preprocessing_says_what_the_application_does():
    cfg = Config.fromfile(str(QUICKSTART / 'retinanet_mobilemamba_demo-coco.py'))
    spec = app_preprocessing(cfg, [1, 3, 384, 384])
    assert spec['channel_order'] == 'RGB' and spec['mean'] == [123.675, 116.28, 103.53]
    assert spec['resize'] == dict(scale=(384, 384), keep_ratio=True)
    assert spec['pad']['to'] == [384, 384] and spec['input']['layout'] == 'NCHW'


def test_runtime_model_pads_smaller_images_for_the_post_processing(tmp_path):
    pytest.importorskip('onnxruntime')
    from mmmobilemamba.deploy import OnnxRuntimeModel
    cfg = Config.fromfile(str(QUICKSTART / 'fpn_mobilemamba_demo-ade.py'))
    model = build_model(cfg)
    inputs = preprocess(model, make_dummy_batch('mmseg', (96, 128)))['inputs']
    export_onnx(model, 'segmentor', inputs, str(tmp_path / 'seg.onnx'))
    batch = make_dummy_batch('mmseg', (60, 100))  # padded to 64x128 by the preprocessor
    with pytest.raises(ValueError, match='pad_to_input_shape'):
        OnnxRuntimeModel(model, str(tmp_path / 'seg.onnx')).test_step(batch)
    runtime = OnnxRuntimeModel(model, str(tmp_path / 'seg.onnx'), pad_to_input_shape=True)
    sample = runtime.test_step(make_dummy_batch('mmseg', (60, 100)))[0]
    assert sample.pred_sem_seg.data.shape == (1, 60, 100)
    assert sample.metainfo['batch_input_shape'] == (96, 128)
