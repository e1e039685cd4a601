"""Kill a training run with SIGKILL, resume it with --resume: it ends where an uninterrupted
run ends (same weights), so iteration, optimizer and scheduler state were all restored."""
import signal
import subprocess
import sys
import time

import pytest
import torch
from tool_configs import REPO, tool_env, write_seg_config, write_seg_dataset

import mmmobilemamba.engine  # noqa: F401  (lets torch.load(weights_only=True) read the checkpoints)

MAX_ITERS = 12
INTERVAL = 3
KILL_AFTER = 'iter_6.pth'


def _train_cmd(config, work_dir, *extra):
    return [sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--work-dir',
            str(work_dir), *extra]


def _train(config, work_dir, *extra):
    proc = subprocess.run(_train_cmd(config, work_dir, *extra), env=tool_env(), cwd=str(REPO),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _kill_when(config, work_dir, ready, log_path=None, timeout=600):
    """Start training and SIGKILL it as soon as ``ready()`` is true."""
    log = open(log_path, 'w') if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(_train_cmd(config, work_dir), env=tool_env(), cwd=str(REPO),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, 'training ended before it could be killed'
            assert time.time() < deadline, 'the moment to kill never came'
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        if log_path:
            log.close()


def _kill_after_checkpoint(config, work_dir, name):
    _kill_when(config, work_dir, lambda: (work_dir / name).exists())


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    pytest.importorskip('mmseg')
    write_seg_dataset(tmp_path / 'data')
    config = write_seg_config(tmp_path / 'fcn.py', tmp_path / 'data', max_iters=MAX_ITERS,
                              interval=INTERVAL)
    _train(config, tmp_path / 'reference')

    work_dir = tmp_path / 'killed'
    _kill_after_checkpoint(config, work_dir, KILL_AFTER)
    assert not (work_dir / f'iter_{MAX_ITERS}.pth').exists()
    # The kill may land between a checkpoint and its pointer update: the pointer (what
    # --resume uses) then still names the previous, complete checkpoint.
    resumed_from = (work_dir / 'last_checkpoint').read_text()
    start_iter = int(resumed_from.rsplit('_', 1)[1].split('.')[0])
    assert start_iter in (6, 9) or start_iter == 3 and (work_dir / KILL_AFTER).exists()

    log = _train(config, work_dir, '--resume')
    assert f'resumed epoch: 0, iter: {start_iter}' in log
    final = torch.load(work_dir / f'iter_{MAX_ITERS}.pth', weights_only=True)
    reference = torch.load(tmp_path / 'reference' / f'iter_{MAX_ITERS}.pth', weights_only=True)
    assert final['meta']['iter'] == MAX_ITERS
    for key, value in reference['state_dict'].items():
        torch.testing.assert_close(final['state_dict'][key], value, rtol=1e-5, atol=1e-6,
                                   msg=f'weights differ at {key}')
    assert final['param_schedulers'] == reference['param_schedulers']
    ref_state = reference['optimizer']['state']
    for index, state in final['optimizer']['state'].items():
        torch.testing.assert_close(state['momentum_buffer'], ref_state[index]['momentum_buffer'],
                                   rtol=1e-5, atol=1e-6)


# The main job (configs/quickstart/retinanet_mobilemamba_demo-coco.py, epoch-based) on the
# built-in shapes data, made small and deterministic: without random augmentation and
# drop-path, an interrupted + resumed run can only end on the uninterrupted run's weights if
# the epoch, iteration, optimizer (AdamW moments) and LR schedule were all restored.
QUICKSTART = REPO / 'configs' / 'quickstart' / 'retinanet_mobilemamba_demo-coco.py'
DET_EPOCHS, DET_ITERS_PER_EPOCH = 3, 6
DET_CONFIG = '''
_base_ = [{base!r}]
data_root = {data_root!r}
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='PackDetInputs'),
]
model = dict(backbone=dict(drop_path_rate=0.0))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval={epochs})
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
    dict(type='CosineAnnealingLR', T_max={epochs}, eta_min=1e-5, by_epoch=True, begin=0,
         end={epochs}, convert_to_iter_based=True),
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
'''


def _kill_mid_epoch(config, work_dir, epoch, iteration):
    """SIGKILL training once its log shows ``Epoch(train) [epoch][iteration/``."""
    work_dir.mkdir(parents=True)
    log_path = work_dir.parent / 'killed_run.log'
    marker = f'Epoch(train) [{epoch}][{iteration}/'
    _kill_when(config, work_dir, lambda: marker in log_path.read_text(), log_path)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_main_job_on_builtin_data(tmp_path):
    pytest.importorskip('mmdet')
    from mmmobilemamba.datasets.synthetic import generate_coco_shapes
    data_root = tmp_path / 'demo_coco'
    generate_coco_shapes(data_root, num_train=2 * DET_ITERS_PER_EPOCH, num_val=2,
                         image_size=64)
    config = tmp_path / 'retinanet_demo_small.py'
    config.write_text(DET_CONFIG.format(base=str(QUICKSTART), data_root=f'{data_root}/',
                                        epochs=DET_EPOCHS))
    _train(config, tmp_path / 'reference')

    work_dir = tmp_path / 'killed'
    _kill_mid_epoch(config, work_dir, epoch=2, iteration=2)
    assert (work_dir / 'epoch_1.pth').is_file()
    assert not (work_dir / f'epoch_{DET_EPOCHS}.pth').exists()
    resumed_from = (work_dir / 'last_checkpoint').read_text()
    start_epoch = int(resumed_from.rsplit('_', 1)[1].split('.')[0])
    assert start_epoch in (1, 2)  # 2 only if the poll was slower than 4 iterations

    log = _train(config, work_dir, '--resume')
    assert (f'resumed epoch: {start_epoch}, iter: {start_epoch * DET_ITERS_PER_EPOCH}'
            in log), log[-3000:]
    last = f'epoch_{DET_EPOCHS}.pth'
    final = torch.load(work_dir / last, weights_only=True)
    reference = torch.load(tmp_path / 'reference' / last, weights_only=True)
    assert final['meta']['epoch'] == reference['meta']['epoch'] == DET_EPOCHS
    assert final['meta']['iter'] == reference['meta']['iter'] == DET_EPOCHS * DET_ITERS_PER_EPOCH
    assert final['param_schedulers'] == reference['param_schedulers']
    for key, value in reference['state_dict'].items():
        torch.testing.assert_close(final['state_dict'][key], value, rtol=1e-4, atol=1e-5,
                                   msg=f'weights differ at {key}')
    for index, state in reference['optimizer']['state'].items():
        for name in ('exp_avg', 'exp_avg_sq'):
            torch.testing.assert_close(final['optimizer']['state'][index][name], state[name],
                                       rtol=1e-4, atol=1e-6)
