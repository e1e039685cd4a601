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


def _kill_after_checkpoint(config, work_dir, name, timeout=600):
    proc = subprocess.Popen(_train_cmd(config, work_dir), env=tool_env(), cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not (work_dir / name).exists():
            assert proc.poll() is None, 'training ended before it could be killed'
            assert time.time() < deadline, f'{name} never appeared'
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


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
