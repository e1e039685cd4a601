"""scripts/mmcv_build_plan.py: how ``make setup`` builds mmcv, decided on made-up machines."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'scripts' / 'mmcv_build_plan.py'
_spec = importlib.util.spec_from_file_location('mmcv_build_plan', SCRIPT)
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)

NVCC_13 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""
NVCC_12 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Tue_Oct_29_23:50:19_PDT_2024
Cuda compilation tools, release 12.6, V12.6.85
Build cuda_12.6.r12.6/compiler.35059454_0
"""
TK13 = bp.Toolkit('/usr/local/cuda-13.0', '13.0')
TK12 = bp.Toolkit('/usr/local/cuda-12.6', '12.6')


def facts(**kwargs):
    base = dict(torch_version='2.14.1+cu130', torch_cuda='13.0', cpu_count=16, mem_gb=120.0,
                pip_cuda_home='/repo/.venv/cuda-toolkit')
    base.update(kwargs)
    return bp.Facts(**base)


# ------------------------------------------------------------------------------- decisions
def test_gpu_and_matching_nvcc_build_cuda_ops_for_that_gpu():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,)))
    assert plan.ops == 'cuda' and not plan.needs_pip_toolkit and not plan.error
    assert plan.arch_list == '9.0'
    assert plan.cuda_home == '/usr/local/cuda-13.0'
    assert plan.env == {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '1', 'MAX_JOBS': '16',
                        'TORCH_CUDA_ARCH_LIST': '9.0', 'CUDA_HOME': '/usr/local/cuda-13.0'}
    assert plan.cache_key == 'torch2.14.1_cu130-cuda13.0-sm90'
    assert 'CUDA ops' in plan.message and 'compute capability 9.0' in plan.message
    assert 'nvcc 13.0' in plan.message and 'about 8 minutes' in plan.message
    # what to do should the build fail
    assert 'FORCE_CUDA=1 make setup' in plan.fix and "'nvidia-cuda-nvcc==13.0.*'" in plan.fix


def test_gpus_of_different_capability_are_all_listed_once():
    plan = bp.make_plan(facts(gpus=((9, 0), (8, 6), (9, 0), (8, 6)), toolkits=(TK13,)))
    assert plan.arch_list == '8.6 9.0'
    assert plan.env['TORCH_CUDA_ARCH_LIST'] == '8.6 9.0'
    assert plan.cache_key.endswith('-sm86-sm90')


def test_nvcc_of_another_major_version_takes_the_pip_wheels():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK12,)))
    assert plan.ops == 'cuda' and plan.needs_pip_toolkit and plan.cuda_home is None
    assert plan.pip_packages == ['nvidia-cuda-nvcc==13.0.*', 'nvidia-cuda-crt==13.0.*',
                                 'nvidia-nvvm==13.0.*', 'nvidia-cuda-runtime==13.0.*',
                                 'nvidia-cuda-cccl==13.0.*']
    assert plan.pip_cuda_home == '/repo/.venv/cuda-toolkit'
    assert 'no nvcc 13.x' in plan.message and '12.6 in /usr/local/cuda-12.6' in plan.message
    # the key does not depend on where nvcc comes from: a cached wheel is found either way
    assert plan.cache_key == bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,))).cache_key


def test_matching_toolkit_is_preferred_over_an_earlier_one_of_another_major():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK12, TK13)))
    assert plan.cuda_home == TK13.home and not plan.needs_pip_toolkit


def test_cuda_12_torch_asks_for_the_cu12_wheels():
    assert bp.pip_toolkit_packages('12.8') == [
        'nvidia-cuda-nvcc-cu12==12.8.*', 'nvidia-cuda-runtime-cu12==12.8.*',
        'nvidia-cuda-cccl-cu12==12.8.*']


def test_no_gpu_builds_cpu_ops_in_the_cache_folder_it_always_had():
    plan = bp.make_plan(facts(cpu_count=2, mem_gb=21.0, toolkits=(TK13,)))
    assert plan.ops == 'cpu' and not plan.fix and not plan.error
    assert plan.cache_key == 'torch2.14.1_cu130'  # ~/.cache/.../mmcv-2.1.0-torch2.14.1_cu130
    assert plan.env == {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '0', 'MAX_JOBS': '2'}
    assert plan.message == ('building mmcv 2.1.0 with CPU ops (no CUDA GPU visible to torch; '
                            '2 parallel jobs, about 15 minutes)')


def test_cpu_only_torch_builds_cpu_ops_even_with_a_gpu():
    plan = bp.make_plan(facts(torch_version='2.14.1+cpu', torch_cuda=None, gpus=((9, 0),)))
    assert plan.ops == 'cpu' and 'torch is a CPU-only build' in plan.message


def test_force_cuda_0_builds_cpu_ops_and_hides_the_gpu_from_mmcv_setup():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,), force_cuda='0'))
    assert plan.ops == 'cpu' and 'FORCE_CUDA=0' in plan.message
    # mmcv's setup.py compiles CUDA whenever torch.cuda.is_available()
    assert plan.env['CUDA_VISIBLE_DEVICES'] == ''
    assert 'unset FORCE_CUDA' in plan.fix


def test_force_cuda_1_without_gpu_builds_for_torchs_architectures():
    plan = bp.make_plan(facts(toolkits=(TK13,), force_cuda='1',
                              torch_arch_list=('sm_80', 'sm_90', 'sm_90a', 'sm_100', 'sm_120')))
    assert plan.ops == 'cuda' and 'FORCE_CUDA=1' in plan.message
    assert plan.arch_list == '8.0 9.0 10.0 12.0'


def test_force_cuda_1_with_a_cpu_only_torch_is_an_error_naming_the_fix():
    plan = bp.make_plan(facts(torch_version='2.14.1+cpu', torch_cuda=None, force_cuda='1'))
    assert 'FORCE_CUDA=1' in plan.error and 'CPU-only' in plan.error
    assert 'requirements/torch.txt' in plan.error


def test_torch_cuda_arch_list_variable_wins_over_the_gpus():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,), arch_list='8.0;9.0'))
    assert plan.arch_list == '8.0 9.0' and 'TORCH_CUDA_ARCH_LIST' in plan.message


def test_cpu_fallback_says_why_and_how_to_rebuild():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=()), cpu_fallback=True)
    assert plan.ops == 'cpu' and 'CUDA ops could not be built' in plan.message
    assert plan.env['CUDA_VISIBLE_DEVICES'] == ''
    for part in ('nvcc 13.0', 'cuda-nvcc-13-0', "'nvidia-cuda-nvcc==13.0.*'", 'CUDA_HOME',
                 'FORCE_CUDA=1 make setup'):
        assert part in plan.fix, part


@pytest.mark.parametrize('cores,mem_gb,per_job,jobs', [
    (16, 120.0, 3, 16), (16, 20.0, 3, 6), (2, 21.0, 3, 2), (8, 2.5, 3, 1), (8, 10.0, 2, 5)])
def test_max_jobs_from_cores_and_memory(cores, mem_gb, per_job, jobs):
    assert bp.max_jobs(cores, mem_gb, per_job) == jobs


def test_cuda_builds_count_3_gb_a_job_and_max_jobs_variable_wins():
    assert bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,), mem_gb=20.0)).max_jobs == 6
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,), max_jobs=3))
    assert plan.env['MAX_JOBS'] == '3'


def test_cache_keys_differ_for_cpu_cuda_and_arch_lists():
    keys = {bp.cache_key('2.14.1+cu130', 'cpu'),
            bp.cache_key('2.14.1+cu130', 'cuda', '13.0', '9.0'),
            bp.cache_key('2.14.1+cu130', 'cuda', '13.0', '8.6 9.0'),
            bp.cache_key('2.14.1+cu130', 'cuda', '12.8', '9.0'),
            bp.cache_key('2.13.0+cu130', 'cuda', '13.0', '9.0')}
    assert len(keys) == 5


def test_build_time_estimates():
    assert bp.build_minutes('cpu', 2) == 15
    assert bp.build_minutes('cuda', 16) == 8
    assert bp.build_minutes('cuda', 16, 2) > bp.build_minutes('cuda', 16, 1)
    assert bp.build_minutes('cuda', 2) == 60


# ------------------------------------------------------------------------- reading facts
def test_nvcc_version_is_parsed_from_real_output():
    assert bp.parse_nvcc_version(NVCC_13) == '13.0'
    assert bp.parse_nvcc_version(NVCC_12) == '12.6'
    assert bp.parse_nvcc_version('sh: nvcc: not found') is None


def _toolkit(root: Path, name: str, headers: bool = True) -> str:
    home = root / name
    (home / 'bin').mkdir(parents=True)
    (home / 'bin' / 'nvcc').write_text('#!/bin/sh\n')
    (home / 'bin' / 'nvcc').chmod(0o755)
    if headers:
        (home / 'include').mkdir()
        (home / 'include' / 'cuda_runtime.h').write_text('')
    return str(home)


def test_toolkits_need_nvcc_and_headers_and_are_found_once(tmp_path):
    real = _toolkit(tmp_path, 'cuda-13.0')
    os.symlink(real, tmp_path / 'cuda')
    wrapper_home = _toolkit(tmp_path, 'local', headers=False)  # /usr/local/bin/nvcc wrapper
    homes = [wrapper_home, real, str(tmp_path / 'cuda'), str(tmp_path / 'missing')]
    found = bp.find_toolkits(homes, nvcc_output=lambda nvcc: NVCC_13)
    assert found == [bp.Toolkit(real, '13.0')]
    assert bp.find_toolkits([real], nvcc_output=lambda nvcc: '') == []


def test_candidate_homes_in_order_of_preference(tmp_path):
    nvcc = Path(_toolkit(tmp_path, 'opt-cuda')) / 'bin' / 'nvcc'
    homes = bp.candidate_cuda_homes({'CUDA_HOME': '/my/cuda'}, '13.0', '/repo/.venv/cuda-toolkit',
                                    which=lambda name: str(nvcc))
    assert homes == ['/my/cuda', str(tmp_path / 'opt-cuda'), '/usr/local/cuda-13.0',
                     '/usr/local/cuda', '/repo/.venv/cuda-toolkit']


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:       24683792 kB\nMemAvailable:   12582912 kB\n')
    assert bp.available_memory_gb(str(meminfo)) == 12.0
    assert bp.available_memory_gb(str(tmp_path / 'none')) == 4.0


# ------------------------------------------------------------ a CUDA_HOME from PyPI wheels
def _touch(path: Path, text: str = '') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cuda_13_wheels_are_assembled_as_a_cuda_home(tmp_path):
    nvidia = tmp_path / 'site-packages' / 'nvidia'
    for rel in ('cu13/bin/nvcc', 'cu13/bin/crt/link.stub', 'cu13/include/crt/host_config.h',
                'cu13/include/cuda_runtime.h', 'cu13/include/cublas_v2.h',
                'cu13/lib/libcudart.so.13', 'cu13/lib/libcudart_static.a', 'cu13/nvvm/bin/cicc',
                'cu12/include/old.h', 'cudnn/include/cudnn.h', 'cudnn/lib/libcudnn.so.9'):
        _touch(nvidia / rel)
    home = Path(bp.assemble_cuda_home(str(nvidia), str(tmp_path / 'cuda'), '13.0'))
    assert (home / 'bin' / 'nvcc').resolve() == (nvidia / 'cu13/bin/nvcc').resolve()
    assert (home / 'include' / 'crt' / 'host_config.h').exists()
    assert (home / 'include' / 'cudnn.h').exists()
    assert not (home / 'include' / 'old.h').exists()  # another CUDA major
    assert (home / 'nvvm' / 'bin' / 'cicc').exists()
    # the linker's -lcudart needs the unversioned name the wheels do not ship
    assert os.readlink(home / 'lib64' / 'libcudart.so') == 'libcudart.so.13'
    assert (home / 'lib64' / 'libcudart.so').exists()
    assert (home / 'lib64' / 'libcudnn.so').exists()
    # again: replaced, not failing on what is there
    assert bp.assemble_cuda_home(str(nvidia), str(home), '13.0') == str(home)


def test_cuda_12_wheels_in_one_folder_per_component_are_merged(tmp_path):
    nvidia = tmp_path / 'nvidia'
    for rel in ('cuda_nvcc/bin/nvcc', 'cuda_nvcc/include/crt/host_config.h',
                'cuda_nvcc/nvvm/bin/cicc', 'cuda_runtime/include/cuda_runtime.h',
                'cuda_runtime/lib/libcudart.so.12', 'cuda_cccl/include/thrust/sort.h'):
        _touch(nvidia / rel)
    home = Path(bp.assemble_cuda_home(str(nvidia), str(tmp_path / 'cuda'), '12.8'))
    for rel in ('bin/nvcc', 'include/crt/host_config.h', 'include/cuda_runtime.h',
                'include/thrust/sort.h', 'nvvm/bin/cicc', 'lib64/libcudart.so'):
        assert (home / rel).exists(), rel


def test_assembling_without_nvcc_names_the_wheels(tmp_path):
    _touch(tmp_path / 'nvidia' / 'cu13' / 'include' / 'cuda_runtime.h')
    with pytest.raises(FileNotFoundError, match=r'bin/nvcc .*nvidia-cuda-nvcc==13\.0\.\*'):
        bp.assemble_cuda_home(str(tmp_path / 'nvidia'), str(tmp_path / 'cuda'), '13.0')


# ---------------------------------------------------------------------- the command line
def _run(*args, env=None):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ('FORCE_CUDA', 'MAX_JOBS', 'TORCH_CUDA_ARCH_LIST')}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=full_env, check=True, timeout=120).stdout


def test_json_describes_this_machine():
    out = json.loads(_run('--json', '--pip-cuda-home', '/x/cuda-toolkit'))
    import torch
    assert out['facts']['torch_version'] == torch.__version__
    assert out['plan']['ops'] == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert out['facts']['pip_cuda_home'] == '/x/cuda-toolkit'


def test_shell_output_is_what_setup_sh_evaluates(tmp_path):
    script = ('set -euo pipefail; eval "$(' + f'{sys.executable} {SCRIPT} --shell' + ')"; '
              'echo "$MMCV_OPS|$MMCV_CACHE_KEY|${MMCV_BUILD_ENV[*]}|${#MMCV_PIP_PACKAGES[@]}"')
    env = {k: v for k, v in os.environ.items() if k not in ('FORCE_CUDA', 'TORCH_CUDA_ARCH_LIST')}
    env.update(MAX_JOBS='3', CUDA_VISIBLE_DEVICES='')
    out = subprocess.run(['bash', '-c', script], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.strip()
    import torch
    tag = torch.__version__.replace('+', '_')
    assert out == f'cpu|torch{tag}|MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=3|0'


def test_shell_lines_quote_every_value():
    plan = bp.make_plan(facts(gpus=((8, 6), (9, 0)), toolkits=(TK13,)))
    text = bp.shell_lines(plan)
    assert "MMCV_ARCH_LIST='8.6 9.0'" in text
    assert "'TORCH_CUDA_ARCH_LIST=8.6 9.0'" in text
    assert 'MMCV_CUDA_VERSION=13.0' in text
    out = subprocess.run(['bash', '-c', text + '\necho "${MMCV_BUILD_ENV[3]}|$MMCV_PLAN_MESSAGE"'],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith('TORCH_CUDA_ARCH_LIST=8.6 9.0|building mmcv 2.1.0 with CUDA ops')
