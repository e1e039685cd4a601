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
    assert 'nvcc 13.0' in plan.message and 'about 3 minutes' in plan.message
    # what to do should the build fail: its log, not another nvcc (this one is there)
    assert 'FORCE_CUDA=1 make setup' in plan.fix and 'mmcv-build-cuda.log' in plan.fix
    assert 'nvcc 13.0 from /usr/local/cuda-13.0' in plan.fix and 'nvidia-cuda-nvcc' not in plan.fix


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
    # measured: one architecture on 2 cores (docs/setup.md)
    assert bp.build_minutes('cuda', 2) == 25
    # each further architecture compiles every .cu file's device code once more
    assert [bp.build_minutes('cuda', 2, n) for n in (2, 4)] == [31, 43]
    assert bp.build_minutes('cuda', 4) == 12
    # many cores: bounded by the slowest file, which grows with the architectures
    assert bp.build_minutes('cuda', 16) == bp.build_minutes('cuda', 64) == 3
    assert bp.build_minutes('cuda', 64, 4) == 9


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


# ------------------------------------------------------- torch's CUDA headers and a toolkit
GCC_MISSING = ("/venv/torch/include/ATen/cuda/CUDAContextLight.h:10:10: fatal error: "
               "cusparse.h: No such file or directory\n   10 | #include <cusparse.h>\n"
               "compilation terminated.\n")
CLANG_MISSING = ("/venv/torch/include/ATen/cuda/CUDAContextLight.h:10:10: fatal error: "
                 "'cusparse.h' file not found\n")
# What torch 2.14.1+cu130's CUDA headers read from outside torch, as nvcc finds them.
TORCH_NEEDS = ('cuda_runtime_api.h', 'cusparse.h', 'cublas_v2.h', 'cublasLt.h', 'cusolverDn.h')


def fake_preprocessor(needs=TORCH_NEEDS, calls=None):
    """Stands in for ``nvcc -M``: each header of ``needs`` is looked up in the toolkit's
    include/, then the CPATH folders; the first one missing is a gcc fatal error."""
    def run(nvcc, torch_includes, cpath):
        if calls is not None:
            calls.append(list(cpath))
        home = Path(nvcc).parents[1]
        read = []
        for header in needs:
            where = next((d for d in [home / 'include', *map(Path, cpath)]
                          if (d / header).is_file()), None)
            if where is None:
                return None, GCC_MISSING.replace('cusparse.h', header)
            read.append(str(where / header))
        return 'probe.o: probe.cu \\\n ' + ' \\\n '.join(read) + '\n', ''
    return run


def _headers(folder: Path, *names: str) -> str:
    for name in names:
        _touch(folder / name)
    return str(folder)


def test_missing_header_is_read_from_gcc_and_clang_errors():
    assert bp.missing_header_of(GCC_MISSING) == 'cusparse.h'
    assert bp.missing_header_of(CLANG_MISSING) == 'cusparse.h'
    assert bp.missing_header_of('error: #error C++20 or later compatible compiler') is None


def test_a_complete_toolkit_needs_nothing_from_the_wheels(tmp_path):
    home = _toolkit(tmp_path, 'cuda-13.0')
    _headers(Path(home) / 'include', *TORCH_NEEDS)
    wheels = _headers(tmp_path / 'nvidia' / 'cu13' / 'include', 'cusparse.h')
    toolkit = bp.check_torch_headers(bp.Toolkit(home, '13.0'), [], [wheels],
                                     dependencies=fake_preprocessor())
    assert toolkit.usable and toolkit.include_fill == () and toolkit.filled_headers == ()


def test_a_minimal_toolkit_takes_the_headers_it_lacks_from_torchs_wheels(tmp_path):
    home = _toolkit(tmp_path, 'cuda-13.0')  # nvcc and the runtime headers only
    _headers(Path(home) / 'include', 'cuda_runtime_api.h')
    cudnn = _headers(tmp_path / 'nvidia' / 'cudnn' / 'include', 'cudnn.h')
    cu13 = _headers(tmp_path / 'nvidia' / 'cu13' / 'include', 'cuda_runtime_api.h',
                    'cusparse.h', 'cublas_v2.h', 'cublasLt.h', 'cusolverDn.h')
    calls = []
    toolkit = bp.check_torch_headers(bp.Toolkit(home, '13.0'), [], [cudnn, cu13],
                                     cpath=['/my/include'],
                                     dependencies=fake_preprocessor(calls=calls))
    assert toolkit.usable and toolkit.include_fill == (cu13,)
    # the toolkit's own cuda_runtime_api.h is not counted as filled
    assert toolkit.filled_headers == ('cublasLt.h', 'cublas_v2.h', 'cusolverDn.h', 'cusparse.h')
    # the user's CPATH stays first; one more run once cu13/include joined
    assert calls == [['/my/include'], ['/my/include', cu13]]


def test_a_header_found_nowhere_is_named(tmp_path):
    home = _toolkit(tmp_path, 'cuda-13.0')
    cu13 = _headers(tmp_path / 'nvidia' / 'cu13' / 'include', 'cusparse.h')  # no cuBLAS
    toolkit = bp.check_torch_headers(bp.Toolkit(home, '13.0'), [], [cu13],
                                     dependencies=fake_preprocessor(needs=('cusparse.h',
                                                                           'cublas_v2.h')))
    assert not toolkit.usable
    assert toolkit.missing_header == 'cublas_v2.h' and toolkit.include_fill == (cu13,)


def test_another_preprocessor_failure_is_kept_as_the_toolkits_error(tmp_path):
    home = _toolkit(tmp_path, 'cuda-13.0')
    old_gcc = ('In file included from x.cu:1:\n/t/include/ATen/ATen.h:5:2: error: #error C++20 '
               'or later compatible compiler is required to use ATen.\n')
    toolkit = bp.check_torch_headers(bp.Toolkit(home, '13.0'), [], [],
                                     dependencies=lambda *args: (None, old_gcc))
    assert not toolkit.usable and not toolkit.missing_header
    assert toolkit.header_error.startswith('/t/include/ATen/ATen.h:5:2: error: #error C++20')


def test_toolkits_are_checked_in_order_until_one_is_usable(tmp_path):
    bare = bp.Toolkit(_toolkit(tmp_path, 'bare-13'), '13.0')
    full = bp.Toolkit(_toolkit(tmp_path, 'full-13'), '13.0')
    _headers(Path(full.home) / 'include', *TORCH_NEEDS)
    later = bp.Toolkit(_toolkit(tmp_path, 'later-13'), '13.0')
    other = bp.Toolkit(_toolkit(tmp_path, 'cuda-12'), '12.6')
    checked = bp.check_toolkits([other, bare, full, later], '13.0', [], [],
                                dependencies=fake_preprocessor())
    assert checked[0] == other  # another major: not checked
    assert checked[1].missing_header == 'cuda_runtime_api.h'
    assert checked[2].usable and checked[3] == later


def test_torchs_wheel_include_folders_of_its_cuda_major(tmp_path):
    nvidia = tmp_path / 'nvidia'
    for rel in ('cu12/include/a.h', 'cu13/include/b.h', 'cudnn/include/cudnn.h', 'nccl/lib/x'):
        _touch(nvidia / rel)
    assert bp.wheel_include_dirs(str(nvidia), '13.0') == [
        str(nvidia / 'cu13' / 'include'), str(nvidia / 'cudnn' / 'include')]
    assert bp.wheel_include_dirs(None, '13.0') == []


def test_the_probed_torch_headers_exist_in_torch():
    import torch
    include = Path(bp.torch_include_dirs(str(Path(torch.__file__).parent))[0])
    missing = [h for h in bp.TORCH_CUDA_EXTENSION_HEADERS if not (include / h).is_file()]
    assert not missing, f'torch {torch.__version__} no longer has {missing}'


FILLED_TK13 = bp.Toolkit('/usr/local/cuda-13.0', '13.0',
                         include_fill=('/venv/nvidia/cu13/include',),
                         filled_headers=('cublas_v2.h', 'cusparse.h'))
TORCH_REQUIRES = ('cuda-toolkit[cublas,cudart,cusolver,cusparse]==13.0.3; '
                  'platform_system == "Linux"',
                  'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"',
                  'nvidia-cusparselt-cu13==0.8.1; platform_system == "Linux"')


def test_a_filled_toolkit_builds_with_the_wheels_on_cpath_after_the_users():
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(FILLED_TK13,), cpath='/my/include'))
    assert plan.ops == 'cuda' and not plan.blocked and plan.cuda_home == FILLED_TK13.home
    assert plan.env['CPATH'] == '/my/include:/venv/nvidia/cu13/include'
    assert plan.env['CUDA_HOME'] == '/usr/local/cuda-13.0'
    assert ('the headers it lacks (cublas_v2.h cusparse.h) from torch\'s wheels in '
            '/venv/nvidia/cu13/include') in plan.message
    # a complete toolkit leaves CPATH alone
    assert 'CPATH' not in bp.make_plan(facts(gpus=((9, 0),), toolkits=(TK13,))).env


def test_a_header_missing_everywhere_blocks_cuda_ops_naming_torchs_requirement():
    blocked = bp.Toolkit('/usr/local/cuda-13.0', '13.0', missing_header='cusparse.h')
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(blocked,),
                              cuda_wheels='/venv/nvidia', torch_requirements=TORCH_REQUIRES))
    assert plan.ops == 'cuda' and not plan.needs_pip_toolkit and not plan.env
    assert plan.blocked == ("torch's CUDA headers include cusparse.h, which is neither in "
                            '/usr/local/cuda-13.0/include (nvcc 13.0) nor in torch\'s nvidia-* '
                            'wheels in /venv/nvidia')
    assert plan.fix.startswith("install cusparse.h with the package torch 2.14.1+cu130 requires "
                               "for it: .venv/bin/pip install 'cuda-toolkit[cusparse]==13.0.3', "
                               'then run FORCE_CUDA=1 make setup')
    # the CPU fallback prints the same fix (not: install the nvcc that is there)
    fallback = bp.make_plan(facts(gpus=((9, 0),), toolkits=(blocked,),
                                  torch_requirements=TORCH_REQUIRES), cpu_fallback=True)
    assert fallback.ops == 'cpu' and 'cuda-toolkit[cusparse]==13.0.3' in fallback.fix
    assert 'CUDA ops could not be built' in fallback.message


def test_a_torch_without_nvidia_wheels_is_sent_to_the_toolkits_dev_package():
    blocked = bp.Toolkit('/usr/local/cuda-13.0', '13.0', missing_header='cusparse.h')
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(blocked,)))
    assert "nor in torch's nvidia-* wheels (none installed)" in plan.blocked
    assert 'apt-get install libcusparse-dev-13-0' in plan.fix
    assert 'FORCE_CUDA=1 make setup' in plan.fix


def test_a_later_usable_toolkit_wins_over_a_blocked_one():
    blocked = bp.Toolkit('/opt/cuda-13.0', '13.0', header_error='error: #error C++20')
    plan = bp.make_plan(facts(gpus=((9, 0),), toolkits=(blocked, TK13)))
    assert not plan.blocked and plan.cuda_home == TK13.home
    alone = bp.make_plan(facts(gpus=((9, 0),), toolkits=(blocked,)))
    assert alone.blocked.endswith('from /opt/cuda-13.0: error: #error C++20')
    assert 'set CUDA_HOME to another CUDA 13.x toolkit' in alone.fix


@pytest.mark.parametrize('header,requirements,wanted', [
    ('cusparse.h', TORCH_REQUIRES, 'cuda-toolkit[cusparse]==13.0.3'),
    ('cublasLt.h', TORCH_REQUIRES, 'cuda-toolkit[cublas]==13.0.3'),
    ('cusparseLt.h', TORCH_REQUIRES, 'nvidia-cusparselt-cu13==0.8.1'),
    ('cudnn.h', TORCH_REQUIRES, 'nvidia-cudnn-cu13==9.24.0.43'),
    ('curand.h', TORCH_REQUIRES, None),  # not among the extras
    ('cusparse.h', ('nvidia-cusparse-cu12==12.5.8.93; platform_system == "Linux"',),
     'nvidia-cusparse-cu12==12.5.8.93'),
    ('nvrtc.h', ('nvidia-cuda-nvrtc-cu12==12.8.93',), 'nvidia-cuda-nvrtc-cu12==12.8.93'),
    ('mystery.h', TORCH_REQUIRES, None),
])
def test_the_torch_requirement_holding_a_header(header, requirements, wanted):
    assert bp.torch_requirement_for(header, requirements) == wanted


def test_json_facts_with_checked_toolkits_read_back_equal(tmp_path):
    made = facts(gpus=((9, 0),), toolkits=(FILLED_TK13, TK12), torch_requirements=TORCH_REQUIRES)
    data = json.loads(json.dumps(bp.asdict(made)))
    assert bp.facts_from_json(data) == made


def test_a_cpu_plan_does_not_check_torchs_headers(monkeypatch):
    calls = []
    monkeypatch.setattr(bp, 'check_toolkits', lambda *args, **kw: calls.append(args) or args[0])
    base = {k: v for k, v in os.environ.items() if k not in ('FORCE_CUDA', 'CUDA_VISIBLE_DEVICES')}
    bp.gather_facts(env=dict(base, FORCE_CUDA='0'))
    assert calls == []  # seconds of preprocessing saved on every CPU set-up
    import torch
    if torch.version.cuda:
        bp.gather_facts(env=dict(base, FORCE_CUDA='1'))
        assert len(calls) == 1 and calls[0][1] == torch.version.cuda
