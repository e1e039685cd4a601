"""CUDA code compiled for real with the environment ``make setup``'s plan gives mmcv's build.

The plan's other tests check its decisions on made-up machines; this one asks the plan of this
machine for a CUDA build (``FORCE_CUDA=1``, one architecture) and compiles a torch CUDA
extension with it: one kernel, ``ATen/cuda/CUDAContext.h`` included as mmcv's ops include it,
built with ``torch.utils.cpp_extension.load`` in a fresh process (it reads ``CUDA_HOME`` on
import) and loaded, which needs no GPU. A toolkit without the cuSPARSE/cuBLAS/cuSOLVER headers
torch's CUDA headers include fails here in seconds, where mmcv's build failed after minutes.

It runs where an nvcc of torch's CUDA major version is found (about a minute on 2 cores), and
skips, saying why, on a CPU-only torch or without such an nvcc.
"""
import importlib.util
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

ARCH = '9.0'  # one architecture keeps the build near a minute
KERNEL = r'''
#include <ATen/cuda/CUDAContext.h>

__global__ void add_one_kernel(float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] += 1.f;
}

// On torch's current stream (links c10_cuda); running it needs a GPU, building it does not.
extern "C" void mmm_add_one(float* x, int64_t n) {
  const int threads = 256;
  add_one_kernel<<<(n + threads - 1) / threads, threads, 0,
                   at::cuda::getCurrentCUDAStream()>>>(x, n);
}

extern "C" int mmm_cuda_runtime_version() { return CUDART_VERSION; }
'''
# A plain library (no Python binding: torch/extension.h would double the build time), loaded
# by torch.ops.load_library as cpp_extension.load does.
BUILD = '''
import ctypes, sys
import torch.utils.cpp_extension as cpp_extension
path = cpp_extension.load(name='mmm_cuda_probe', sources=[sys.argv[1]],
                          build_directory=sys.argv[2], is_python_module=False, verbose=True)
print('cuda_runtime_version', ctypes.CDLL(path).mmm_cuda_runtime_version())
'''


def _cuda_plan():
    """This machine's plan for a CUDA build for :data:`ARCH`, or a skip saying why none."""
    import torch
    if torch.version.cuda is None:
        pytest.skip(f'torch {torch.__version__} is a CPU-only build: no CUDA code to compile')
    env = {k: v for k, v in os.environ.items() if k not in ('FORCE_CUDA', 'MAX_JOBS')}
    env.update(FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=ARCH)
    facts = bp.gather_facts(env=env)
    plan = bp.make_plan(facts)
    if not facts.toolkits:
        pytest.skip('no nvcc found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda*): nothing to '
                    'compile CUDA code with')
    if plan.needs_pip_toolkit:
        found = ', '.join(f'nvcc {t.version} in {t.home}' for t in facts.toolkits)
        pytest.skip(f'{found}; torch needs CUDA {torch.version.cuda}: make setup would install '
                    "NVIDIA's compiler wheels first")
    # an nvcc of torch's major version is here: the plan must be able to use it
    assert not plan.error and not plan.blocked, plan.message + '\n' + plan.fix
    return plan


def test_torch_cuda_extension_builds_and_loads_with_the_plans_environment(tmp_path):
    plan = _cuda_plan()
    assert plan.ops == 'cuda' and plan.env['TORCH_CUDA_ARCH_LIST'] == ARCH
    source = tmp_path / 'probe.cu'
    source.write_text(KERNEL)
    build = tmp_path / 'build'
    build.mkdir()
    env = dict(os.environ)
    env.update(plan.env)
    # ninja comes with the build tools into the Python's own bin folder
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    result = subprocess.run([sys.executable, '-c', BUILD, str(source), str(build)],
                            capture_output=True, text=True, env=env, timeout=900)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if 'error' in line.lower()]
    assert result.returncode == 0, (
        f'the CUDA extension did not build with the plan ({plan.message}):\n'
        + '\n'.join(errors[:5] + ['...'] + output.splitlines()[-8:]))

    import torch
    major = int(torch.version.cuda.split('.')[0])
    version = int(output.split('cuda_runtime_version')[-1].split()[0])
    assert version // 1000 == major, output  # CUDART_VERSION: 13000 for CUDA 13.0
    # device code for the one architecture asked for, registered when the module loads
    assert f'code=sm_{ARCH.replace(".", "")}' in (build / 'build.ninja').read_text()
    library = next(build.glob('mmm_cuda_probe*.so'))
    assert b'__cudaRegisterFatBinary' in library.read_bytes()
