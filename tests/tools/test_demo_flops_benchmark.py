"""tools/demo.py, tools/analysis/get_flops.py and tools/analysis/benchmark.py end to end.

Tiny randomly initialised MobileMamba detectors/segmentors are written as configs in
tmp_path; the quickstart configs under configs/quickstart/ are checked too when present.
"""
import runpy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmcv.ops')  # the detectors' NMS needs mmcv's compiled ops
pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from tiny_models import TINY_ARCH, TINY_CHANNELS  # noqa: E402

from mmmobilemamba.apis import build_model, detect_codebase, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / 'tools'
QUICKSTART = sorted((ROOT / 'configs' / 'quickstart').glob('*.py'))

MEAN_STD = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
CLASSES = ('cat', 'dog', 'bird')
PALETTE = [(220, 20, 60), (0, 0, 142), (0, 60, 100)]

RETINANET = dict(
    default_scope='mmdet',
    model=dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=64, **MEAN_STD),
        backbone=dict(type='MobileMamba', arch=TINY_ARCH),
        neck=dict(type='MobileMambaFPN', in_channels=TINY_CHANNELS, out_channels=16,
                  num_outs=5, num_deconv_levels=1, add_extra_convs='on_input'),
        bbox_head=dict(
            type='RetinaHead', num_classes=len(CLASSES), in_channels=16, stacked_convs=1,
            feat_channels=16,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0],
                                  strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                            target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25),
            loss_bbox=dict(type='L1Loss')),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=10)),
    test_dataloader=dict(batch_size=1, dataset=dict(
        type='CocoDataset', data_root='', ann_file='', data_prefix=dict(img=''),
        metainfo=dict(classes=CLASSES, palette=PALETTE), test_mode=True, pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(64, 64), keep_ratio=True),
            dict(type='PackDetInputs', meta_keys=('img_path', 'ori_shape', 'img_shape',
                                                  'scale_factor')),
        ])),
)

SEMANTIC_FPN = dict(
    default_scope='mmseg',
    model=dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', pad_val=0, seg_pad_val=255,
                               test_cfg=dict(size_divisor=64), **MEAN_STD),
        backbone=dict(type='MobileMamba', arch=TINY_ARCH),
        neck=dict(type='MobileMambaFPN', in_channels=TINY_CHANNELS, out_channels=16,
                  num_outs=5, num_deconv_levels=2),
        decode_head=dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=16, dropout_ratio=0.0,
                         num_classes=len(CLASSES), align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False)),
        test_cfg=dict(mode='whole')),
    test_dataloader=dict(batch_size=1, dataset=dict(
        type='BaseSegDataset', data_root='', test_mode=True, pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(64, 64), keep_ratio=True),
            dict(type='PackSegInputs'),
        ])),
)


def write_config(path: Path, entries: dict) -> Path:
    path.write_text(''.join(f'{key} = {value!r}\n' for key, value in entries.items()))
    return path


def write_random_checkpoint(config: Path, path: Path) -> Path:
    """Weights of a randomly initialised model, with the class names as a trained one has."""
    model = build_model(load_config(config))
    model.init_weights()
    meta = dict(dataset_meta=dict(classes=CLASSES, palette=PALETTE))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), path)
    return path


def write_image(path: Path, height: int = 48, width: int = 64) -> Path:
    from PIL import Image
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(path)
    return path


def run_tool(script: Path, *args: str, capsys) -> tuple:
    """Run a tool as ``python script args`` in this process; return (exit code, out, err)."""
    argv = sys.argv
    sys.argv = [str(script), *map(str, args)]
    code = 0
    try:
        runpy.run_path(str(script), run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(params=['det', 'seg'])
def tiny(request, tmp_path):
    """(config path, checkpoint path) of a tiny detector or segmentor."""
    entries = RETINANET if request.param == 'det' else SEMANTIC_FPN
    config = write_config(tmp_path / f'tiny_{request.param}.py', entries)
    return config, write_random_checkpoint(config, tmp_path / f'tiny_{request.param}.pth')


def test_scope_from_config(tiny):
    config, _ = tiny
    expected = 'mmdet' if 'det' in config.name else 'mmseg'
    assert detect_codebase(load_config(config)) == expected


def test_scope_without_default_scope_comes_from_the_model_type(tmp_path):
    entries = {k: v for k, v in SEMANTIC_FPN.items() if k != 'default_scope'}
    assert detect_codebase(load_config(write_config(tmp_path / 'seg.py', entries))) == 'mmseg'


def test_demo_draws_and_saves(tiny, tmp_path, capsys):
    config, checkpoint = tiny
    image = write_image(tmp_path / 'street.jpg')
    out_dir = tmp_path / 'out'
    code, out, _ = run_tool(TOOLS / 'demo.py', image, config, checkpoint, '--out-dir', out_dir,
                         '--score-thr', '0.0', capsys=capsys)
    saved = out_dir / 'vis' / 'street.jpg'
    assert code == 0 and saved.is_file() and f'saved {saved}' in out
    from PIL import Image
    assert Image.open(saved).size == (64, 48)


@pytest.mark.parametrize('missing', ['image', 'config', 'checkpoint'])
def test_demo_missing_file_is_a_clear_error(missing, tmp_path, capsys):
    files = dict(image=write_image(tmp_path / 'a.jpg'),
                 config=write_config(tmp_path / 'c.py', RETINANET),
                 checkpoint=tmp_path / 'w.pth')
    files['checkpoint'].write_bytes(b'')
    files[missing] = tmp_path / f'no_such_{missing}'
    argv = [files['image'], files['config'], files['checkpoint'], '--out-dir', tmp_path / 'o']
    code, _, err = run_tool(TOOLS / 'demo.py', *argv, capsys=capsys)
    assert code == 2
    assert f'not found: {files[missing]}' in err


def test_demo_corrupt_image_is_a_clear_error(tmp_path, capsys):
    image = write_image(tmp_path / 'a.jpg')
    image.write_bytes(image.read_bytes()[:200])  # truncated
    checkpoint = tmp_path / 'w.pth'
    checkpoint.write_bytes(b'')
    code, _, err = run_tool(TOOLS / 'demo.py', image, write_config(tmp_path / 'c.py', RETINANET),
                            checkpoint, '--out-dir', tmp_path / 'o', capsys=capsys)
    assert code == 2
    assert f'error: image file is truncated (JPEG without end marker): {image}' in err


def test_get_flops_tool(tiny, capsys):
    config, _ = tiny
    code, out, _ = run_tool(TOOLS / 'analysis' / 'get_flops.py', config, '--shape', '64', '64',
                         '--max-depth', '1', capsys=capsys)
    assert code == 0
    assert 'Flops:' in out and 'Params:' in out and 'backbone' in out and 'neck' in out
    assert 'PythonOp.SelectiveScanChannelsLastOp' in out  # counted, not skipped
    assert 'no FLOP handle' not in out


def test_get_flops_counts_whole_model(tiny):
    from mmmobilemamba.analysis import config_complexity
    config, _ = tiny
    report = config_complexity(config, shape=(64, 64))
    model = build_model(load_config(config))
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.input_shape == (1, 3, 64, 64)
    parts = report.top_level()
    assert parts['backbone'][1] > 0 and parts['neck'][1] > 0
    assert not [op for op in report.unsupported_ops if 'PythonOp' in op
                or 'convolution' in op]


def test_get_flops_cfg_options(tmp_path):
    from mmmobilemamba.analysis import config_complexity
    config = write_config(tmp_path / 'det.py', RETINANET)
    wider = config_complexity(config, shape=(64, 64),
                              cfg_options={'model.neck.out_channels': 32,
                                           'model.bbox_head.in_channels': 32})
    base = config_complexity(config, shape=(64, 64))
    assert wider.params > base.params


def test_benchmark_tool_two_iterations(tiny, capsys):
    config, checkpoint = tiny
    code, out, _ = run_tool(TOOLS / 'analysis' / 'benchmark.py', config, checkpoint, '--shape',
                         '64', '64', '--num-iters', '2', '--warmup', '1', capsys=capsys)
    assert code == 0
    assert 'ms/img' in out and 'FPS' in out and '2 timed iterations' in out


def test_benchmark_fused_network_only(tmp_path):
    from mmmobilemamba.analysis.benchmark import config_benchmark
    config = write_config(tmp_path / 'det.py', RETINANET)
    result = config_benchmark(config, shape=(64, 64), num_iters=2, warmup=0, fuse=True,
                              mode='tensor')
    assert len(result.times_ms) == 2 and result.fps > 0
    assert any('backbone' in note for note in result.notes)


@pytest.mark.skipif(not QUICKSTART, reason='no configs/quickstart/*.py yet')
@pytest.mark.parametrize('config', QUICKSTART, ids=lambda p: p.name)
def test_quickstart_configs_analyse(config):
    from mmmobilemamba.analysis import config_complexity
    report = config_complexity(config, shape=(128, 128), max_depth=1)
    assert report.flops > 0 and report.params > 0
    # ours are counted; mmcv's own ops (NMS, RoIAlign of two-stage detectors) may be listed
    ours = ('SelectiveScan', 'Wavelet', 'LinearRecurrence')
    assert not [op for op in report.unsupported_ops if any(name in op for name in ours)]


def test_fuse_for_inference_keeps_the_outputs(tmp_path):
    from mmmobilemamba.analysis.benchmark import fuse_for_inference
    from mmmobilemamba.analysis.dummy_batch import make_dummy_batch, preprocess
    model = build_model(load_config(write_config(tmp_path / 'det.py', RETINANET)))
    data = preprocess(model, make_dummy_batch('mmdet', (64, 64)))
    with torch.no_grad():
        before = model(data['inputs'], data['data_samples'], mode='tensor')
        fuse_for_inference(model)
        after = model(data['inputs'], data['data_samples'], mode='tensor')
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
