"""scripts/setup.sh's mmcv step on made-up machines: a stand-in .venv/bin/python answers for
torch, pip and the installed mmcv, and the build plan reads made-up facts (``--facts``).
Nothing is downloaded or compiled."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH = '2.14.1+cu130'
CPU_DIR = 'mmcv-2.1.0-torch2.14.1_cu130'  # the cache folder CPU builds always had
CUDA_DIR = 'mmcv-2.1.0-torch2.14.1_cu130-cuda13.0-sm90'

# Records its calls; answers as torch, pip (download, wheel, install) and setup.sh's mmcv_ok.
FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "$*" >>"$FAKE/calls"
case "$1" in
*/mmcv_build_plan.py)
    for a in "$@"; do [ "$a" = --assemble-cuda-home ] && exit 0; done
    facts="$FAKE/facts.json"
    [ -f "$FAKE/toolkit-installed" ] && [ -f "$FAKE/facts-after-toolkit.json" ] \
        && facts="$FAKE/facts-after-toolkit.json"
    exec "$REAL_PY" "$@" --facts "$facts" ;;
-c)
    case "$2" in
    *'print(torch.__version__)'*) echo "$FAKE_TORCH" ;;
    *'print(f"torch'*) echo "torch $FAKE_TORCH, mmcv 2.1.0" ;;
    esac
    exit 0 ;;
-)  # mmcv_ok VERSION OPS KEY STAMP
    cat >/dev/null
    [ -f "$FAKE/installed" ] || exit 1
    if [ "$3" = cuda ]; then
        { [ ! -f "$5" ] || [ "$(cat "$5")" = "$4" ]; } && grep -q cuda "$FAKE/installed"; exit
    fi
    exit 0 ;;
-m)
    shift 2
    case "$1" in
    download)
        while [ $# -gt 0 ]; do [ "$1" = -d ] && dest="$2"; shift; done
        mkdir -p "$FAKE/sdist/mmcv-2.1.0" && echo "-std=c++14" >"$FAKE/sdist/mmcv-2.1.0/setup.py"
        tar -czf "$dest/mmcv-2.1.0.tar.gz" -C "$FAKE/sdist" mmcv-2.1.0 ;;
    wheel)
        while [ $# -gt 0 ]; do [ "$1" = -w ] && dest="$2"; shift; done
        env | grep -E '^(MMCV_WITH_OPS|FORCE_CUDA|MAX_JOBS|TORCH_CUDA_ARCH_LIST|CUDA_HOME|CPATH|CUDA_VISIBLE_DEVICES)=' \
            | sort | tr '\n' ' ' >>"$FAKE/builds"
        echo >>"$FAKE/builds"
        if [ "$FORCE_CUDA" = 1 ] && [ -f "$FAKE/cuda-build-fails" ]; then echo "nvcc fatal" >&2; exit 1; fi
        if [ "$FORCE_CUDA" = 1 ]; then ops=cuda; else ops=cpu; fi
        mkdir -p "$dest" && echo "$ops" >"$dest/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl" ;;
    install)
        for a in "$@"; do
            if [ "$a" = requirements/executorch.txt ] && [ -f "$FAKE/executorch-fails" ]; then
                echo "no matching distribution for executorch" >&2; exit 1
            fi
        done
        for a in "$@"; do
            case "$a" in
            nvidia-cuda-nvcc*)
                if [ -f "$FAKE/pip-nvcc-fails" ]; then echo "no matching distribution" >&2; exit 1; fi
                touch "$FAKE/toolkit-installed" ;;
            *.whl) cp "$a" "$FAKE/installed" ;;
            esac
        done ;;
    esac
    exit 0 ;;
esac
exit 0
'''


def _facts(gpus=(), toolkits=(), force_cuda=None, **more):
    """Facts as ``--json`` writes them; a toolkit is (home, version) or a dict with the
    header check's fields."""
    return dict(torch_version=TORCH, torch_cuda='13.0', gpus=[list(g) for g in gpus],
                toolkits=[t if isinstance(t, dict) else dict(home=t[0], version=t[1])
                          for t in toolkits], cpu_count=2,
                mem_gb=20.0, force_cuda=force_cuda, max_jobs=None, arch_list=None,
                torch_arch_list=['sm_90'], pip_cuda_home=None, **more)


class Setup:
    """A copy of the repository's set-up files around a stand-in .venv."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / 'repo'
        self.fake = tmp_path / 'fake'
        self.cache = tmp_path / 'cache'
        self.fake.mkdir()
        shutil.copytree(ROOT / 'scripts', self.root / 'scripts')
        shutil.copytree(ROOT / 'requirements', self.root / 'requirements')
        shutil.copy(ROOT / 'setup.py', self.root / 'setup.py')
        python = self.root / '.venv' / 'bin' / 'python'
        python.parent.mkdir(parents=True)
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
        # step 4 (mmdet & co.) is up to date: its stamp is the hash setup.sh computes
        want = subprocess.run(
            'cat requirements/runtime.txt requirements/deploy.txt requirements/tests.txt '
            'setup.py | sha1sum | cut -d" " -f1', shell=True, cwd=self.root,
            capture_output=True, text=True, check=True).stdout
        (self.root / '.venv' / '.mmm-setup-stamp').write_text(want)

    def facts(self, name='facts.json', **kwargs):
        (self.fake / name).write_text(json.dumps(_facts(**kwargs)))

    def run(self, check=True, **env):
        full = {k: v for k, v in os.environ.items() if k not in
                ('FORCE_CUDA', 'MAX_JOBS', 'TORCH_CUDA_ARCH_LIST', 'CUDA_HOME', 'CPATH')}
        full.update(FAKE=str(self.fake), REAL_PY=sys.executable, FAKE_TORCH=TORCH,
                    MMM_CACHE=str(self.cache), **env)
        result = subprocess.run(['bash', str(self.root / 'scripts' / 'setup.sh')], env=full,
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def builds(self):
        path = self.fake / 'builds'
        return path.read_text().splitlines() if path.exists() else []

    def installed(self):
        return (self.fake / 'installed').read_text().strip()

    def stamp(self):
        return (self.root / '.venv' / '.mmcv-build').read_text().strip()

    def cache_wheel(self, folder, ops):
        (self.cache / 'wheels' / folder).mkdir(parents=True)
        (self.cache / 'wheels' / folder / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl').write_text(ops)


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def test_cpu_machine_reuses_the_cached_cpu_wheel_under_its_old_name(setup):
    setup.facts()
    setup.cache_wheel(CPU_DIR, 'cpu')
    out = setup.run().stdout
    assert f'reusing the mmcv wheel cached in {setup.cache}/wheels/{CPU_DIR}' in out
    assert setup.builds() == [] and setup.installed() == 'cpu'
    assert 'mmcv 2.1.0 with ops present' in setup.run().stdout  # second run: nothing to do


def test_cpu_machine_builds_cpu_ops_as_before(setup):
    setup.facts()
    out = setup.run().stdout
    assert ('building mmcv 2.1.0 with CPU ops (no CUDA GPU visible to torch; 2 parallel jobs, '
            'about 15 minutes)') in out
    assert setup.builds() == ['FORCE_CUDA=0 MAX_JOBS=2 MMCV_WITH_OPS=1 ']
    assert (setup.cache / 'wheels' / CPU_DIR).is_dir() and setup.installed() == 'cpu'


def test_gpu_machine_replaces_a_cpu_only_mmcv_with_cuda_ops(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[('/usr/local/cuda-13.0', '13.0')])
    setup.cache_wheel(CPU_DIR, 'cpu')
    (setup.fake / 'installed').write_text('cpu')  # a venv set up before, CPU ops
    out = setup.run().stdout
    assert 'with CUDA ops (a CUDA GPU is visible to torch) for compute capability 9.0' in out
    assert setup.builds() == ['CUDA_HOME=/usr/local/cuda-13.0 FORCE_CUDA=1 MAX_JOBS=2 '
                              'MMCV_WITH_OPS=1 TORCH_CUDA_ARCH_LIST=9.0 ']
    assert setup.installed() == 'cuda' and (setup.cache / 'wheels' / CUDA_DIR).is_dir()
    assert setup.stamp() == 'torch2.14.1_cu130-cuda13.0-sm90'
    assert 'with CUDA ops (compute capability 9.0) present' in setup.run().stdout
    assert len(setup.builds()) == 1


def test_gpu_without_matching_nvcc_installs_the_pip_compiler(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[('/usr/local/cuda-12.6', '12.6')])
    pip_home = str(setup.root / '.venv' / 'cuda-toolkit')
    setup.facts('facts-after-toolkit.json', gpus=[(9, 0)],
                toolkits=[('/usr/local/cuda-12.6', '12.6'), (pip_home, '13.0')])
    out = setup.run().stdout
    assert "installing NVIDIA's compiler wheels from PyPI (nvidia-cuda-nvcc==13.0.*" in out
    calls = (setup.fake / 'calls').read_text()
    assert "install --disable-pip-version-check -q nvidia-cuda-nvcc==13.0.* " in calls
    assert f'--assemble-cuda-home {pip_home} --cuda-version 13.0' in calls
    assert setup.builds() == [f'CUDA_HOME={pip_home} FORCE_CUDA=1 MAX_JOBS=2 MMCV_WITH_OPS=1 '
                              'TORCH_CUDA_ARCH_LIST=9.0 ']
    assert setup.installed() == 'cuda'


def test_no_compiler_falls_back_to_cpu_ops_with_the_fix_and_stays_there(setup):
    setup.facts(gpus=[(9, 0)])
    (setup.fake / 'pip-nvcc-fails').touch()
    result = setup.run()
    assert 'mmcv CUDA ops could not be built (cuda-toolkit' in result.stderr
    assert 'WARNING: mmcv has CPU ops only; to build mmcv with CUDA ops' in result.stdout
    assert 'FORCE_CUDA=1 make setup' in result.stdout
    # mmcv's setup.py would compile CUDA anyway while torch sees the GPU
    assert setup.builds() == ['CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MAX_JOBS=2 MMCV_WITH_OPS=1 ']
    assert setup.installed() == 'cpu'
    assert setup.stamp() == 'fallback:torch2.14.1_cu130-cuda13.0-sm90'
    # the next make setup does not try (and fail) again for minutes ...
    out = setup.run().stdout
    assert 'with CPU ops present: its CUDA ops could not be built by an earlier run' in out
    assert len(setup.builds()) == 1
    # ... FORCE_CUDA=1 does, and fails instead of falling back
    setup.facts(gpus=[(9, 0)], force_cuda='1')
    result = setup.run(check=False, FORCE_CUDA='1')
    assert result.returncode == 1
    assert '[setup] FAILED: cuda-toolkit' in result.stderr
    assert 'FORCE_CUDA=1 but CUDA ops cannot be built' in result.stderr


def test_failed_cuda_build_falls_back_to_cpu_ops(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[('/usr/local/cuda-13.0', '13.0')])
    (setup.fake / 'cuda-build-fails').touch()
    result = setup.run()
    assert 'mmcv CUDA ops could not be built (mmcv-build-cuda; log: .venv/setup-logs/mmcv-build-cuda.log)' \
        in result.stderr
    assert [b.split()[1] for b in setup.builds()] == ['FORCE_CUDA=1', 'FORCE_CUDA=0']
    assert not (setup.cache / 'wheels' / CUDA_DIR).exists()  # no half-built cache entry
    assert setup.installed() == 'cpu'
    # the CUDA build's log is not overwritten by the CPU build after it
    logs = setup.root / '.venv' / 'setup-logs'
    assert (logs / 'mmcv-build-cuda.log').is_file() and (logs / 'mmcv-build.log').is_file()


MINIMAL_TK13 = dict(home='/usr/local/cuda-13.0', version='13.0',
                   include_fill=['/venv/nvidia/cu13/include'], filled_headers=['cusparse.h'])
BLOCKED_TK13 = dict(home='/usr/local/cuda-13.0', version='13.0', missing_header='cusparse.h')
TORCH_REQUIRES = ['cuda-toolkit[cublas,cusparse]==13.0.3; platform_system == "Linux"']


def test_minimal_toolkit_builds_with_torchs_wheel_headers_on_cpath(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[MINIMAL_TK13], force_cuda='1')
    out = setup.run(FORCE_CUDA='1').stdout
    assert "headers it lacks (cusparse.h) from torch's wheels in /venv/nvidia/cu13/include" in out
    assert setup.builds() == ['CPATH=/venv/nvidia/cu13/include CUDA_HOME=/usr/local/cuda-13.0 '
                              'FORCE_CUDA=1 MAX_JOBS=2 MMCV_WITH_OPS=1 TORCH_CUDA_ARCH_LIST=9.0 ']
    assert setup.installed() == 'cuda'


def test_header_missing_everywhere_falls_back_naming_it_without_a_cuda_build(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[BLOCKED_TK13], torch_requirements=TORCH_REQUIRES)
    result = setup.run()
    assert "torch's CUDA headers include cusparse.h, which is neither in" in result.stdout
    assert 'mmcv CUDA ops could not be built (cuda-headers' in result.stderr
    assert ("WARNING: mmcv has CPU ops only; install cusparse.h with the package torch "
            "2.14.1+cu130 requires for it: .venv/bin/pip install "
            "'cuda-toolkit[cusparse]==13.0.3'") in result.stdout
    # no CUDA build tried (it would fail minutes later), CPU ops instead
    assert setup.builds() == ['CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MAX_JOBS=2 MMCV_WITH_OPS=1 ']
    assert setup.stamp() == 'fallback:torch2.14.1_cu130-cuda13.0-sm90'
    # FORCE_CUDA=1 fails, naming the header and the fix
    setup.facts(gpus=[(9, 0)], toolkits=[BLOCKED_TK13], force_cuda='1',
                torch_requirements=TORCH_REQUIRES)
    result = setup.run(check=False, FORCE_CUDA='1')
    assert result.returncode == 1 and '[setup] FAILED: cuda-headers' in result.stderr
    assert 'include cusparse.h, which is neither in /usr/local/cuda-13.0/include' in result.stderr
    assert ("FORCE_CUDA=1 but CUDA ops cannot be built: install cusparse.h with the package "
            "torch 2.14.1+cu130 requires") in result.stderr
    assert len(setup.builds()) == 1


def test_header_missing_everywhere_still_reuses_a_cached_cuda_wheel(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[BLOCKED_TK13])
    setup.cache_wheel(CUDA_DIR, 'cuda')
    out = setup.run().stdout
    assert f'reusing the mmcv wheel cached in {setup.cache}/wheels/{CUDA_DIR}' in out
    assert setup.builds() == [] and setup.installed() == 'cuda'


def test_force_cuda_0_builds_cpu_ops_on_a_gpu_machine(setup):
    setup.facts(gpus=[(9, 0)], toolkits=[('/usr/local/cuda-13.0', '13.0')], force_cuda='0')
    out = setup.run(FORCE_CUDA='0').stdout
    assert 'with CPU ops (FORCE_CUDA=0' in out
    assert setup.builds() == ['CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MAX_JOBS=2 MMCV_WITH_OPS=1 ']


def test_force_cuda_1_with_cpu_only_torch_fails_naming_the_fix(setup):
    facts = _facts(force_cuda='1')
    facts.update(torch_version='2.14.1+cpu', torch_cuda=None)
    (setup.fake / 'facts.json').write_text(json.dumps(facts))
    result = setup.run(check=False, FORCE_CUDA='1')
    assert result.returncode == 1
    assert 'FAILED: mmcv-plan' in result.stderr and 'CPU-only build' in result.stderr
    assert setup.builds() == []


# ------------------------------------------------------- step 5: ExecuTorch, optional
def _executorch_installs(setup):
    calls = (setup.fake / 'calls').read_text().splitlines()
    return [c for c in calls if 'requirements/executorch.txt' in c]


def test_executorch_is_installed_once_under_the_torch_pin(setup):
    setup.facts()
    setup.cache_wheel(CPU_DIR, 'cpu')
    out = setup.run().stdout
    assert 'installing executorch (requirements/executorch.txt' in out
    assert _executorch_installs(setup) == [
        '-m pip install --disable-pip-version-check -q -r requirements/executorch.txt '
        '-c requirements/torch.txt']
    assert (setup.root / '.venv' / '.mmm-executorch-stamp').is_file()
    assert 'executorch present' in setup.run().stdout  # second run: nothing to install
    assert len(_executorch_installs(setup)) == 1


def test_executorch_failure_is_a_warning_and_the_next_run_tries_again(setup):
    setup.facts()
    setup.cache_wheel(CPU_DIR, 'cpu')
    (setup.fake / 'executorch-fails').touch()
    result = setup.run()  # exit status 0: everything else is set up
    assert 'WARNING: executorch could not be installed' in result.stderr
    assert 'ready:' in result.stdout
    assert not (setup.root / '.venv' / '.mmm-executorch-stamp').exists()
    (setup.fake / 'executorch-fails').unlink()
    assert 'installing executorch' in setup.run().stdout
    assert len(_executorch_installs(setup)) == 2


# ------------------------------------------------- mmcv_ok: the installed build, for real
def _mmcv_ok_script() -> str:
    text = (ROOT / 'scripts' / 'setup.sh').read_text()
    start = text.index("<<'PYEOF'\n") + len("<<'PYEOF'\n")
    return text[start:text.index('PYEOF\n', start)]


def _installed_mmcv(site: Path, ext_bytes: bytes, version: str = '2.1.0') -> None:
    """An mmcv distribution in ``site`` whose compiled ops file holds ``ext_bytes``."""
    info = site / f'mmcv-{version}.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: mmcv\nVersion: {version}\n')
    ext = 'mmcv/_ext.cpython-311-x86_64-linux-gnu.so'
    (info / 'RECORD').write_text(f'{ext},,\nmmcv-{version}.dist-info/METADATA,,\n')
    (site / 'mmcv').mkdir()
    (site / ext).write_bytes(ext_bytes)


@pytest.mark.parametrize('ext_bytes,ops,stamp,ok', [
    (b'\x7fELF cpu kernels', 'cpu', None, True),           # CPU plan: any ops will do
    (b'\x7fELF cpu kernels', 'cuda', 'KEY', False),        # CUDA plan, CPU-only build
    (b'\x7fELF __cudaRegisterFatBinary', 'cuda', 'KEY', True),
    (b'\x7fELF __cudaRegisterFatBinary', 'cuda', 'OTHER', False),  # built for other GPUs
    (b'\x7fELF __cudaRegisterFatBinary', 'cuda', None, True),  # built by hand
    (b'\x7fELF cpu kernels', 'cuda', None, False),
])
def test_mmcv_ok_tells_cpu_only_builds_from_the_compiled_file(tmp_path, ext_bytes, ops, stamp,
                                                              ok):
    _installed_mmcv(tmp_path / 'site', ext_bytes)
    stamp_file = tmp_path / '.mmcv-build'
    if stamp:
        stamp_file.write_text(stamp + '\n')
    result = subprocess.run([sys.executable, '-', '2.1.0', ops, 'KEY', str(stamp_file)],
                            input=_mmcv_ok_script(), capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')))
    assert (result.returncode == 0) is ok, result.stderr


def test_mmcv_ok_wants_mmcv_2_1_0_with_ops(tmp_path):
    _installed_mmcv(tmp_path / 'site', b'', version='2.2.0')
    result = subprocess.run([sys.executable, '-', '2.1.0', 'cpu', 'KEY', str(tmp_path / 's')],
                            input=_mmcv_ok_script(), capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')))
    assert result.returncode != 0
