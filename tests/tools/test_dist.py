"""tools/dist_train.sh and tools/dist_test.sh: 2-process DDP on CPU (gloo) with torchrun."""
import os
import socket
import subprocess
import sys

import pytest
from tool_configs import (DET_CLASSES, REPO, tool_env, write_coco_dataset, write_seg_config,
                          write_seg_dataset)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _run(script, args, timeout=600):
    env = tool_env()
    env.update(PYTHON=sys.executable, PORT=str(_free_port()))
    return subprocess.run(['bash', str(REPO / 'tools' / script), *map(str, args)], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


# An open flake of the 2-process CPU runs (seen in CI and under load, never reproduced alone):
# rank 0 aborts at interpreter exit, after its work, with this line (a C++ thread left
# joinable); exit -6. Such a run is tried once more; any other failure counts at once.
_EXIT_ABORT = 'terminate called without an active exception'


def _run_distributed(script, args):
    """``_run``, once more if the first run ended in the exit-time abort above."""
    proc = _run(script, args)
    if proc.returncode != 0 and _EXIT_ABORT in proc.stdout + proc.stderr:
        print(f'{script}: the exit-time abort ({_EXIT_ABORT!r}); one more run', file=sys.stderr)
        proc = _run(script, args)
    return proc


def _failure_report(log: str) -> str:
    """What a failed run printed that matters (warnings fill the tail): its progress, error
    and traceback lines, then the end of the log."""
    keys = ('Error', 'error', 'terminate', 'Traceback', 'Evaluation results', 'Iter(',
            'Signal', 'exitcode')
    lines = [line for line in log.splitlines() if any(key in line for key in keys)]
    return '\n'.join(lines[-60:]) + '\n----- end of the log -----\n' + log[-2000:]


def test_usage_message_without_arguments():
    proc = _run('dist_train.sh', [])
    assert proc.returncode == 2 and 'usage' in proc.stderr
    proc = _run('dist_test.sh', ['cfg.py'])
    assert proc.returncode == 2 and 'usage' in proc.stderr


@pytest.mark.slow
def test_two_process_cpu_training_and_testing(tmp_path):
    pytest.importorskip('mmseg')
    write_seg_dataset(tmp_path / 'data')
    config = write_seg_config(tmp_path / 'fcn_tiny.py', tmp_path / 'data')
    work_dir = tmp_path / 'work'
    proc = _run_distributed('dist_train.sh', [config, 2, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failure_report(log)
    assert 'Distributed training: True' in log
    assert (work_dir / 'iter_4.pth').is_file()
    assert os.listdir(work_dir).count('last_checkpoint') == 1

    proc = _run_distributed('dist_test.sh',
                            [config, work_dir / 'iter_4.pth', 2, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failure_report(log)
    assert 'Evaluation results:' in log and 'mIoU' in log


# The paper's SSDLite (MobileMamba-B1 stages 0-1, no find_unused_parameters) on tiny data.
_SSDLITE_CHILD = """
_base_ = {base!r}
data_root = {data_root!r}
metainfo = dict(classes={classes!r})
model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes={num_classes}))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Expand', mean=[123.675, 116.28, 103.53], to_rgb=True, ratio_range=(1, 2)),
    dict(type='Resize', scale=(128, 128), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(times=1, dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json',
        data_prefix=dict(img='images/'), filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline)))
train_cfg = dict(max_epochs=2, val_interval=100)
val_cfg = None
val_dataloader = None
val_evaluator = None
test_cfg = None
test_dataloader = None
test_evaluator = None
default_hooks = dict(logger=dict(interval=1))
log_processor = dict(window_size=1)
"""


@pytest.mark.slow
def test_two_process_ssdlite_training_with_the_paper_config(tmp_path):
    """SSDLite reads backbone stages 0-1 only; every parameter gets a gradient, so DDP trains
    it without find_unused_parameters (the authors' model left stage 2 without gradients)."""
    pytest.importorskip('mmdet')
    data = write_coco_dataset(tmp_path / 'data', num_train=8, num_val=1)
    config = tmp_path / 'ssdlite_ddp.py'
    base = REPO / 'configs' / 'mobilemamba' / 'ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py'
    config.write_text(_SSDLITE_CHILD.format(base=str(base), data_root=str(data),
                                            classes=DET_CLASSES, num_classes=len(DET_CLASSES)))
    work_dir = tmp_path / 'work'
    proc = _run('dist_train.sh', [config, 2, '--work-dir', work_dir], timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, _failure_report(log)
    assert 'Distributed training: True' in log
    assert (work_dir / 'epoch_2.pth').is_file()  # 2 iterations per epoch, 4 in all
