"""The command lines that tools/dist_*.sh and tools/slurm_*.sh build (mmdetection's interface).

Nothing is launched: ``PYTHON`` (dist_*.sh) and ``srun`` (slurm_*.sh, put first on ``PATH``)
are stand-ins that print the arguments they were given, one a line. The 2-process runs
themselves are in test_dist.py.
"""
import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools'
# prints its arguments one a line, then PYTHONPATH (the scripts put the repository first)
_ECHO = '#!/usr/bin/env bash\nprintf "%s\\n" "$@"\necho "PYTHONPATH=$PYTHONPATH"\n'
# what the scripts read from the environment: a test sets only what it means to
_LAUNCH_VARS = ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT', 'GPUS', 'GPUS_PER_NODE',
                'CPUS_PER_TASK', 'SRUN_ARGS', 'PYTHON')


@pytest.fixture
def echo(tmp_path):
    """A folder holding ``srun`` and ``python`` stand-ins that print their arguments."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    for name in ('srun', 'python'):
        path = folder / name
        path.write_text(_ECHO)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def _run(echo: Path, script: str, args, **env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env['PATH'] = f'{echo}{os.pathsep}{env["PATH"]}'
    env['PYTHON'] = str(echo / 'python')
    env.update(env_vars)
    return subprocess.run(['bash', str(TOOLS / script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60)


def _args(proc: subprocess.CompletedProcess) -> list:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# ------------------------------------------------------------------ dist_train / dist_test
@pytest.mark.parametrize('script,positional,entry', [
    ('dist_train.sh', ['cfg.py', '8'], ['tools/train.py', 'cfg.py']),
    ('dist_test.sh', ['cfg.py', 'ckpt.pth', '8'], ['tools/test.py', 'cfg.py', 'ckpt.pth']),
])
def test_dist_scripts_default_to_one_node(echo, script, positional, entry):
    args = _args(_run(echo, script, [*positional, '--cfg-options', 'a=1']))
    assert args[:6] == ['-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0',
                        '--master_addr=127.0.0.1', '--master_port=29500']
    assert args[6] == '--nproc_per_node=8'
    assert args[7] == str(REPO / entry[0]) and args[8:8 + len(entry) - 1] == entry[1:]
    assert args[8 + len(entry) - 1:-1] == ['--launcher', 'pytorch', '--cfg-options', 'a=1']
    assert args[-1].startswith(f'PYTHONPATH={REPO}')


@pytest.mark.parametrize('script,positional', [
    ('dist_train.sh', ['cfg.py', '8']),
    ('dist_test.sh', ['cfg.py', 'ckpt.pth', '8']),
])
def test_dist_scripts_take_the_nodes_from_the_environment(echo, script, positional):
    """Node 1 of 2, as on the second machine of a 16-GPU detection run."""
    args = _args(_run(echo, script, positional, NNODES='2', NODE_RANK='1',
                      MASTER_ADDR='10.1.2.3', PORT='29612'))
    assert args[2:7] == ['--nnodes=2', '--node_rank=1', '--master_addr=10.1.2.3',
                         '--master_port=29612', '--nproc_per_node=8']


# ------------------------------------------------------------------ slurm_train / slurm_test
def _srun_options(args: list) -> dict:
    """srun's options before the python command: ``-p`` and the ``--key=value`` ones."""
    head = args[:next(i for i, a in enumerate(args) if a.endswith('/python'))]
    options = {'-p': head[head.index('-p') + 1]}
    options.update(a.split('=', 1) for a in head if a.startswith('--') and '=' in a)
    return options


def _command(args: list, python: str) -> list:
    """The python command srun runs (from the interpreter on, PYTHONPATH line dropped)."""
    return args[args.index(python):-1]


def test_slurm_train_takes_the_gpus_from_the_environment(echo):
    python = str(echo / 'python')
    args = _args(_run(echo, 'slurm_train.sh', ['gpu', 'det', 'cfg.py', 'work', '--resume'],
                      GPUS='16', CPUS_PER_TASK='4', SRUN_ARGS='--quotatype=auto --time=1:00'))
    assert args[:2] == ['-p', 'gpu']
    options = _srun_options(args)
    assert options['--job-name'] == 'det' and options['--ntasks'] == '16'
    assert options['--gres'] == 'gpu:8' and options['--ntasks-per-node'] == '8'
    assert options['--cpus-per-task'] == '4' and options['--kill-on-bad-exit'] == '1'
    # SRUN_ARGS are srun's options, before the command
    assert args.index('--time=1:00') < args.index(python)
    assert '--quotatype=auto' in args
    assert _command(args, python) == [python, '-u', str(TOOLS / 'train.py'), 'cfg.py',
                                      '--work-dir=work', '--launcher=slurm', '--resume']


def test_slurm_train_defaults_to_8_gpus_and_fewer_per_node_for_small_jobs(echo):
    options = _srun_options(_args(_run(echo, 'slurm_train.sh', ['p', 'j', 'cfg.py', 'w'])))
    assert options['--ntasks'] == '8' and options['--gres'] == 'gpu:8'
    assert options['--cpus-per-task'] == '5'
    options = _srun_options(_args(_run(echo, 'slurm_train.sh', ['p', 'j', 'cfg.py', 'w'],
                                       GPUS='4')))
    assert options['--ntasks'] == '4' and options['--gres'] == 'gpu:4'
    assert options['--ntasks-per-node'] == '4'
    options = _srun_options(_args(_run(echo, 'slurm_train.sh', ['p', 'j', 'cfg.py', 'w'],
                                       GPUS='16', GPUS_PER_NODE='4')))
    assert options['--ntasks'] == '16' and options['--ntasks-per-node'] == '4'


def test_slurm_train_still_takes_gpus_as_the_fifth_argument(echo):
    """The script's earlier interface: ``... WORK_DIR GPUS [options]``."""
    python = str(echo / 'python')
    args = _args(_run(echo, 'slurm_train.sh', ['p', 'j', 'cfg.py', 'w', '4', '--amp']))
    assert _srun_options(args)['--ntasks'] == '4'
    assert _command(args, python)[-1] == '--amp' and '4' not in _command(args, python)


def test_slurm_test_runs_test_py_on_the_checkpoint(echo):
    python = str(echo / 'python')
    args = _args(_run(echo, 'slurm_test.sh', ['gpu', 'ev', 'cfg.py', 'ckpt.pth', '--tta'],
                      GPUS='4'))
    options = _srun_options(args)
    assert options['--job-name'] == 'ev' and options['--ntasks'] == '4'
    assert options['--gres'] == 'gpu:4'
    assert _command(args, python) == [python, '-u', str(TOOLS / 'test.py'), 'cfg.py',
                                      'ckpt.pth', '--launcher=slurm', '--tta']
    assert args[-1].startswith(f'PYTHONPATH={REPO}')


@pytest.mark.parametrize('script,args', [('slurm_train.sh', ['p', 'j', 'cfg.py']),
                                         ('slurm_test.sh', ['p', 'j', 'cfg.py']),
                                         ('slurm_srun.sh', ['p', 'j'])])
def test_slurm_scripts_print_their_usage(echo, script, args):
    proc = _run(echo, script, args)
    assert proc.returncode == 2 and 'usage' in proc.stderr and 'GPUS=N' in proc.stderr
