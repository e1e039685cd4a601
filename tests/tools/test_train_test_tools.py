"""tools/train.py, tools/test.py and tools/misc/check_dataset.py on tiny detection/seg configs."""
import os
import pickle

import pytest
from cuda_checks import needs_mmcv_cuda_ops
from tool_configs import (run_tool, write_coco_dataset, write_det_config,
                          write_seg_config, write_seg_dataset)

from mmmobilemamba.engine import launch
from mmmobilemamba.engine.config import ConfigError, detect_codebase, load_config
from mmmobilemamba.engine.launch import LaunchError

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')


@pytest.fixture(scope='module')
def det_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('det')
    write_coco_dataset(root / 'data')
    return write_det_config(root / 'retina_tiny.py', root / 'data')


@pytest.fixture(scope='module')
def seg_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('seg')
    write_seg_dataset(root / 'data')
    return write_seg_config(root / 'fcn_tiny.py', root / 'data')


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------- end to end
def test_detection_train_then_test(det_setup, tmp_path):
    work_dir = tmp_path / 'work'
    log = _ok(run_tool('train.py', [det_setup, '--work-dir', work_dir]))
    assert 'coco/bbox_mAP' in log  # validation at the end of training
    checkpoint = work_dir / 'epoch_1.pth'
    assert (work_dir / 'last_checkpoint').read_text() == str(checkpoint)

    out = tmp_path / 'results.pkl'
    log = _ok(run_tool('test.py', [det_setup, checkpoint, '--work-dir', work_dir, '--out', out,
                                   '--show-dir', tmp_path / 'vis']))
    assert 'Average Precision' in log  # the COCO table
    assert 'Evaluation results: coco/bbox_mAP' in log
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2 and 'pred_instances' in results[0]
    assert len(list((tmp_path / 'vis').glob('*.png'))) == 2


@pytest.mark.slow
def test_segmentation_train_then_test(seg_setup, tmp_path):
    work_dir = tmp_path / 'work'
    _ok(run_tool('train.py', [seg_setup, '--work-dir', work_dir]))
    checkpoint = work_dir / 'iter_4.pth'
    out = tmp_path / 'results.pkl'
    log = _ok(run_tool('test.py', [seg_setup, checkpoint, '--work-dir', work_dir, '--out', out,
                                   '--show-dir', tmp_path / 'vis']))
    assert 'mIoU' in log and 'aAcc' in log and 'per class results' in log
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2
    assert results[0]['pred_sem_seg'].shape == (64, 64)
    assert set(results[0]) >= {'img_path', 'pred_sem_seg'} and 'seg_logits' not in results[0]
    assert len(list((tmp_path / 'vis' / 'vis_data' / 'vis_image').glob('*.png'))) == 2


def test_class_count_mismatch_stops_before_training(det_setup, tmp_path):
    proc = run_tool('train.py', [det_setup, '--work-dir', tmp_path,
                                 '--cfg-options', 'model.bbox_head.num_classes=5'])
    assert proc.returncode == 2
    assert 'model.bbox_head.num_classes: 5 in the model' in proc.stderr
    assert 'has 2 classes' in proc.stderr and 'model.bbox_head.num_classes=2' in proc.stderr
    assert not list(tmp_path.glob('*.pth'))


def test_check_dataset_tool(seg_setup):
    proc = run_tool('misc/check_dataset.py', [
        seg_setup, '--full', '--cfg-options', 'model.auxiliary_head.0.num_classes=7'])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'model.auxiliary_head.0.num_classes: 7 in the model' in proc.stdout
    assert '1 error(s), 0 warning(s)' in proc.stdout  # the data itself is fine


# ---------------------------------------------------------------- command-line handling
def _train_cfg(config, *extra):
    args = launch.build_train_parser().parse_args([str(config), *map(str, extra)])
    return launch.prepare_train_config(args)


def _test_cfg(config, checkpoint, *extra):
    args = launch.build_test_parser().parse_args([str(config), str(checkpoint), *extra])
    return launch.prepare_test_config(args)


def test_train_flags(det_setup, tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # --amp: see test_amp_*
    cfg = _train_cfg(det_setup, '--work-dir', tmp_path, '--amp', '--auto-scale-lr',
                     '--launcher', 'none', '--local-rank', '0')
    monkeypatch.undo()
    assert cfg.work_dir == str(tmp_path)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.auto_scale_lr.enable is True
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert [h['type'] for h in cfg.custom_hooks] == ['FiniteLossGuardHook']
    cfg = _train_cfg(det_setup, '--no-safety-hooks')
    assert cfg.default_hooks.checkpoint.type == 'CheckpointHook'
    assert cfg.work_dir.endswith('work_dirs/retina_tiny')


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='the no-GPU case')
def test_amp_without_a_gpu_says_so_and_trains_in_float32(det_setup, tmp_path):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        cfg = _train_cfg(det_setup, '--work-dir', tmp_path, '--amp')
    finally:
        logger.removeHandler(handler)
    assert cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'
    assert any('--amp: no CUDA device' in r.getMessage() and 'trains in float32' in r.getMessage()
               for r in records)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__('torch').cuda.is_available(), reason='needs CUDA')
@needs_mmcv_cuda_ops  # the quickstart RetinaNet's focal loss
def test_amp_on_cuda_trains_the_quickstart_retinanet(tmp_path):
    """tools/train.py --amp on a GPU: a short run of the quickstart RetinaNet, finite losses."""
    from mmmobilemamba.datasets.synthetic import generate_coco_shapes
    from tool_configs import REPO
    data = generate_coco_shapes(tmp_path / 'coco', num_train=4, num_val=1, image_size=64)['root']
    proc = run_tool('train.py', [
        REPO / 'configs/quickstart/retinanet_mobilemamba_demo-coco.py', '--amp',
        '--work-dir', tmp_path / 'work', '--cfg-options', f'train_dataloader.dataset.data_root={data}/',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_cfg.max_epochs=2', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None'],
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'AmpOptimWrapper' in (tmp_path / 'work' / 'retinanet_mobilemamba_demo-coco.py').read_text()


def test_resume_flag(det_setup, tmp_path):
    cfg = _train_cfg(det_setup, '--work-dir', tmp_path, '--resume')
    assert not cfg.resume  # nothing to resume from yet: train from scratch
    (tmp_path / 'epoch_1.pth').write_bytes(b'x')
    (tmp_path / 'epoch_3.pth').write_bytes(b'x')
    cfg = _train_cfg(det_setup, '--work-dir', tmp_path, '--resume')
    assert cfg.resume and cfg.load_from == str(tmp_path / 'epoch_3.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    cfg = _train_cfg(det_setup, '--work-dir', tmp_path, '--resume')
    assert cfg.load_from.endswith('epoch_1.pth')
    cfg = _train_cfg(det_setup, '--resume', tmp_path / 'epoch_3.pth')
    assert cfg.resume and cfg.load_from == str(tmp_path / 'epoch_3.pth')
    with pytest.raises(LaunchError, match='not found'):
        _train_cfg(det_setup, '--resume', tmp_path / 'missing.pth')


def test_test_flags(det_setup, seg_setup, tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'x')
    cfg = _test_cfg(det_setup, checkpoint, '--tta', '--out', str(tmp_path / 'r.pkl'),
                    '--show-dir', 'vis')
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.type == 'RetinaNet'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'
    assert cfg.test_evaluator[-1] == dict(type='DumpDetResults',
                                          out_file_path=str(tmp_path / 'r.pkl'))
    visualization = cfg.default_hooks.visualization
    assert visualization.draw and visualization.test_out_dir == os.path.abspath('vis')
    cfg = _test_cfg(seg_setup, checkpoint, '--out', 'r.pkl', '--show-dir', 'vis')
    assert cfg.test_evaluator[-1].type == 'DumpSegResults'
    assert cfg.visualizer.save_dir == os.path.abspath('vis')
    with pytest.raises(LaunchError, match='tta_model'):
        _test_cfg(seg_setup, checkpoint, '--tta')
    with pytest.raises(LaunchError, match='.pkl'):
        _test_cfg(seg_setup, checkpoint, '--out', 'results.json')
    with pytest.raises(LaunchError, match='checkpoint not found'):
        _test_cfg(seg_setup, tmp_path / 'nope.pth')


def test_codebase_detection(det_setup, seg_setup):
    assert detect_codebase(load_config(str(det_setup))) == 'mmdet'
    cfg = load_config(str(seg_setup))
    assert detect_codebase(cfg) == 'mmseg'
    cfg.default_scope = None
    assert detect_codebase(cfg) == 'mmseg'  # from the model type
    cfg.model.type = 'NoSuchModel'
    with pytest.raises(ConfigError, match="set default_scope = 'mmdet' or 'mmseg'"):
        detect_codebase(cfg)
    cfg.default_scope = 'mmpretrain'
    with pytest.raises(ConfigError, match="default_scope='mmpretrain' is not supported"):
        detect_codebase(cfg)
