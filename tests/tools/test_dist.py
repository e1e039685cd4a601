"""tools/dist_train.sh and tools/dist_test.sh: 2-process DDP on CPU (gloo) with torchrun."""
import os
import socket
import subprocess
import sys

import pytest
from tool_configs import REPO, tool_env, write_seg_config, write_seg_dataset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _run(script, args, timeout=600):
    env = tool_env()
    env.update(PYTHON=sys.executable, PORT=str(_free_port()))
    return subprocess.run(['bash', str(REPO / 'tools' / script), *map(str, args)], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


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
    proc = _run('dist_train.sh', [config, 2, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'Distributed training: True' in log
    assert (work_dir / 'iter_4.pth').is_file()
    assert os.listdir(work_dir).count('last_checkpoint') == 1

    proc = _run('dist_test.sh', [config, work_dir / 'iter_4.pth', 2, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'Evaluation results:' in log and 'mIoU' in log
