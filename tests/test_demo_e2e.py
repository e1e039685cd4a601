"""End to end, as `make demo` does it: train the RetinaNet quickstart with tools/train.py on a
small generated shapes set, then evaluate the checkpoint with tools/test.py (subprocesses).

Slow (a minute or two on a CPU): deselected by `make test`, run by `make test-slow`.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmmobilemamba.datasets.synthetic import generate_coco_shapes

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'configs/quickstart/retinanet_mobilemamba_demo-coco.py'
EPOCHS = 2


def run_tool(args, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args[0]} failed ({proc.returncode}):\n{output[-4000:]}'
    return output


@pytest.mark.slow
def test_retinanet_quickstart_trains_and_evaluates(tmp_path):
    data = tmp_path / 'demo_coco'
    generate_coco_shapes(data, num_train=16, num_val=8, image_size=96)
    work_dir = tmp_path / 'work'
    data_options = [
        f'train_dataloader.dataset.data_root={data}/',
        f'val_dataloader.dataset.data_root={data}/',
        f'test_dataloader.dataset.data_root={data}/',
        f'val_evaluator.ann_file={data}/annotations/instances_val.json',
        f'test_evaluator.ann_file={data}/annotations/instances_val.json',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        # two epochs on 16 images learn little: keep every detection so that the COCO
        # evaluation has results to score (this checks the loop, not the accuracy)
        'model.test_cfg.score_thr=0.0',
    ]
    train_log = run_tool([
        'tools/train.py', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
        f'train_cfg.max_epochs={EPOCHS}', f'train_cfg.val_interval={EPOCHS}',
        'train_dataloader.batch_size=8',
        f'default_hooks.checkpoint.interval={EPOCHS}', *data_options])
    # the progress display: per-iteration lines with losses and an ETA
    assert re.search(r'Epoch\(train\)\s+\[1\]\[\s*2/2\].*eta:.*loss:', train_log), \
        train_log[-3000:]
    assert 'Epoch(val)' in train_log and 'bbox_mAP' in train_log
    checkpoint = work_dir / f'epoch_{EPOCHS}.pth'
    assert checkpoint.is_file(), sorted(p.name for p in work_dir.iterdir())
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(checkpoint)

    show_dir = tmp_path / 'vis'
    test_log = run_tool([
        'tools/test.py', CONFIG, str(checkpoint), '--work-dir', str(work_dir),
        '--show-dir', str(show_dir), '--cfg-options', *data_options])
    match = re.search(r'Evaluation results: .*coco/bbox_mAP: ([0-9.]+)', test_log)
    assert match, test_log[-3000:]
    assert 0.0 <= float(match.group(1)) <= 1.0
    # the COCO AP table
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in test_log
    drawn = list(show_dir.glob('*.jpg')) + list(show_dir.glob('*.png'))
    assert len(drawn) == 8
