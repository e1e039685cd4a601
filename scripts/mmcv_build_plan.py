"""How ``scripts/setup.sh`` builds mmcv 2.1.0: with CUDA ops or CPU ops, for which GPUs, how.

``make setup`` runs this with the virtual environment's Python once torch is installed. It
gathers what the machine offers (:func:`gather_facts`: torch's CUDA version and the compute
capabilities of the GPUs it sees, the CUDA toolkits whose ``nvcc`` is there, cores, memory,
``FORCE_CUDA``) and decides (:func:`make_plan`, pure, so it can be tested with made-up
machines):

* a GPU visible to torch -> CUDA ops for the architectures of the GPUs present only (one
  architecture compiles several times faster than torch's full list);
* no GPU -> CPU ops (as before: the cache of CPU wheels keeps its folder names);
* ``FORCE_CUDA=1`` -> CUDA ops even without a GPU (e.g. on a build node), an error when torch
  has no CUDA; ``FORCE_CUDA=0`` -> CPU ops even with a GPU.

``nvcc`` must have torch's CUDA major version. When no such toolkit is on the machine the plan
asks for NVIDIA's compiler wheels from PyPI (``nvidia-cuda-nvcc`` & co. of torch's CUDA
version); ``setup.sh`` installs them into ``.venv``, calls :func:`assemble_cuda_home`
(``--assemble-cuda-home``) to lay them out as a CUDA_HOME and plans again.

A toolkit is usable when torch's CUDA headers compile against it (:func:`check_torch_headers`,
run where CUDA ops are wanted): they include cuSPARSE, cuBLAS and cuSOLVER headers that a
minimal toolkit (nvcc and the runtime only, as in slim CUDA images) lacks. torch's own
``nvidia-*`` wheels carry them; their include folders fill the gap through ``CPATH``. A header
found nowhere makes the plan name it and the one package that provides it.

It imports only the standard library at module level (torch inside :func:`gather_facts`):
``setup.sh`` runs it before anything else is installed, and tests import it by path.

Usage::

    python scripts/mmcv_build_plan.py [--json | --shell] [--pip-cuda-home DIR] [--cpu-fallback]
    python scripts/mmcv_build_plan.py --assemble-cuda-home DIR --cuda-version 13.0
"""
import argparse
import json
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

MMCV_VERSION = '2.1.0'
# Peak memory of one compiler process on mmcv's sources with torch's headers: nvcc ~2-3 GB,
# g++ ~1.5-2 GB. More parallel jobs than memory allows end in the OOM killer mid-build.
GB_PER_CUDA_JOB = 3
GB_PER_CPU_JOB = 2
# Build times in minutes of one compiler job (docs/setup.md has the measurements). CPU ops: 77
# .cpp files, 15 minutes on 2 cores. CUDA ops: 78 .cpp and 58 .cu files, 25 minutes on 2 cores
# for one architecture; each .cu file's host part is compiled once, its device code once
# per architecture (+20% for a typical op, +75% for filtered_lrelu.cu's templates).
CPU_JOB_MINUTES = 30
CUDA_JOB_MINUTES = 50
CUDA_ARCH_JOB_MINUTES = 12
# However many cores: the slowest file (filtered_lrelu.cu, 2.5 minutes for one architecture,
# +1.8 per further one) and the link.
CUDA_MIN_MINUTES, CUDA_MIN_ARCH_MINUTES = 3, 2
README_HINT = "README.md, 'Installing into your own environment'"


@dataclass(frozen=True)
class Toolkit:
    """A CUDA toolkit usable as CUDA_HOME.

    The header fields are set by :func:`check_torch_headers` (only where CUDA ops are wanted);
    a toolkit nobody checked counts as complete.

    Attributes:
        home: The folder holding ``bin/nvcc`` and ``include/cuda_runtime.h``.
        version: ``nvcc --version``'s release, e.g. ``'13.0'``.
        include_fill: Include folders of torch's ``nvidia-*`` wheels that supply the headers
            this toolkit lacks (the build's ``CPATH``), e.g. ``('.../nvidia/cu13/include',)``.
        filled_headers: Those headers, e.g. ``('cublas_v2.h', 'cusparse.h')``.
        missing_header: A header torch's CUDA headers include that neither the toolkit nor
            the wheels hold, e.g. ``'cusparse.h'``; '' when none.
        header_error: The preprocessor's error when torch's CUDA headers fail with this
            toolkit for another reason (an old host compiler, ...); '' when none.
    """
    home: str
    version: str
    include_fill: Tuple[str, ...] = ()
    filled_headers: Tuple[str, ...] = ()
    missing_header: str = ''
    header_error: str = ''

    @property
    def nvcc(self) -> str:
        return osp.join(self.home, 'bin', 'nvcc')

    @property
    def major(self) -> str:
        return self.version.split('.')[0]

    @property
    def usable(self) -> bool:
        """Whether torch's CUDA headers compile with it (with ``include_fill`` on CPATH)."""
        return not (self.missing_header or self.header_error)


@dataclass(frozen=True)
class Facts:
    """What the machine offers, as :func:`gather_facts` reads it.

    Attributes:
        torch_version: ``torch.__version__``, e.g. ``'2.14.1+cu130'``.
        torch_cuda: ``torch.version.cuda`` (``'13.0'``), None for a CPU-only torch.
        gpus: Compute capabilities of the GPUs torch sees, e.g. ``((9, 0), (8, 6))``; empty
            when ``torch.cuda.is_available()`` is False.
        toolkits: CUDA toolkits found, in order of preference (any version).
        cpu_count: The cores this process may use (:func:`usable_cores`).
        mem_gb: Available memory in GB (``/proc/meminfo``).
        force_cuda: The ``FORCE_CUDA`` variable (``'0'``, ``'1'``) or None when unset/empty.
        max_jobs: The ``MAX_JOBS`` variable when set (it wins over the estimate).
        arch_list: The ``TORCH_CUDA_ARCH_LIST`` variable when set (it wins over the GPUs).
        torch_arch_list: ``torch.cuda.get_arch_list()`` (``'sm_90'`` ...): the architectures
            a ``FORCE_CUDA=1`` build without a GPU compiles for.
        pip_cuda_home: Where ``setup.sh`` assembles a toolkit from PyPI wheels.
        cpath: The ``CPATH`` variable when set (the build keeps it, before any filled folder).
        cuda_wheels: ``site-packages/nvidia`` beside torch (its ``nvidia-*`` wheels), if any.
        torch_requirements: torch's requirements that bring CUDA libraries (its metadata's
            ``cuda-toolkit[cublas,...]==13.0.3``, ``nvidia-cusparse-cu12==...``): what
            installs a header the wheels should hold.
    """
    torch_version: str
    torch_cuda: Optional[str]
    gpus: Tuple[Tuple[int, int], ...] = ()
    toolkits: Tuple[Toolkit, ...] = ()
    cpu_count: int = 1
    mem_gb: float = 4.0
    force_cuda: Optional[str] = None
    max_jobs: Optional[int] = None
    arch_list: Optional[str] = None
    torch_arch_list: Tuple[str, ...] = ()
    pip_cuda_home: Optional[str] = None
    cpath: Optional[str] = None
    cuda_wheels: Optional[str] = None
    torch_requirements: Tuple[str, ...] = ()


@dataclass
class Plan:
    """What to build and how.

    Attributes:
        ops: ``'cuda'`` or ``'cpu'``.
        cache_key: Names the cached wheel's folder: ``mmcv-2.1.0-<cache_key>``. CPU builds keep
            the name caches had before CUDA builds existed (``torch<version>``); CUDA builds add
            the CUDA version and the architectures (``torch<version>-cuda13.0-sm90``).
        cuda_version: torch's CUDA version, for CUDA builds (the toolkit's major matches).
        arch_list: ``TORCH_CUDA_ARCH_LIST`` of a CUDA build (``'8.6 9.0'``), else ''.
        max_jobs: Parallel compiler jobs.
        cuda_home: The toolkit a CUDA build uses; None for CPU builds and while
            ``needs_pip_toolkit``.
        needs_pip_toolkit: CUDA ops are wanted but no toolkit of torch's CUDA major version
            is there: install ``pip_packages``, assemble them as ``pip_cuda_home``, plan again.
        pip_packages: pip requirement specifiers of NVIDIA's compiler wheels for torch's CUDA.
        pip_cuda_home: Where to assemble them.
        env: The build's environment variables.
        message: One line saying what is built, for which architectures, and about how long.
        fix: When CUDA ops are wanted, what to do if they cannot be built (install what, how
            to rebuild); for a CPU fallback, why it happened and the same.
        error: Set when nothing sensible can be built (``FORCE_CUDA=1`` with a CPU-only torch).
        blocked: CUDA ops are wanted and a toolkit of torch's CUDA major version is there, but
            torch's CUDA headers do not compile with it (a header missing everywhere): why;
            ``fix`` says what to install. ``setup.sh`` treats it as a failed CUDA build.
    """
    ops: str
    cache_key: str
    cuda_version: str = ''
    arch_list: str = ''
    max_jobs: int = 1
    cuda_home: Optional[str] = None
    needs_pip_toolkit: bool = False
    pip_packages: List[str] = field(default_factory=list)
    pip_cuda_home: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    message: str = ''
    fix: str = ''
    error: str = ''
    blocked: str = ''


# ------------------------------------------------------------------------------ decisions
def parse_nvcc_version(text: str) -> Optional[str]:
    """``'13.0'`` from ``nvcc --version``'s output (``... release 13.0, V13.0.88``), or None."""
    match = re.search(r'release (\d+)\.(\d+)', text)
    return f'{match.group(1)}.{match.group(2)}' if match else None


def cache_key(torch_version: str, ops: str, cuda_version: Optional[str] = None,
              arch_list: str = '') -> str:
    """The cached wheel's key: ``torch2.14.1_cu130`` (CPU ops, the name caches always had),
    ``torch2.14.1_cu130-cuda13.0-sm86-sm90`` (CUDA ops for two architectures)."""
    key = 'torch' + torch_version.replace('+', '_')
    if ops == 'cpu':
        return key
    archs = '-'.join('sm' + a.replace('.', '').replace('+PTX', 'ptx') for a in arch_list.split())
    return f'{key}-cuda{cuda_version}-{archs}'


def arch_list_of(gpus: Sequence[Tuple[int, int]]) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the GPUs present: each capability once, in order."""
    return ' '.join(f'{major}.{minor}' for major, minor in sorted(set(gpus)))


def _arch_list_of_torch(torch_arch_list: Sequence[str]) -> str:
    """``'7.5 8.0 9.0'`` from ``torch.cuda.get_arch_list()``'s ``['sm_75', 'sm_80', 'sm_90']``."""
    caps = set()
    for arch in torch_arch_list:
        match = re.fullmatch(r'sm_(\d+?)(\d)a?', arch)
        if match:
            caps.add((int(match.group(1)), int(match.group(2))))
    return arch_list_of(sorted(caps))


def max_jobs(cpu_count: int, mem_gb: float, gb_per_job: int) -> int:
    """Parallel compiler jobs: one per core, as many as memory holds, at least one."""
    return max(1, min(cpu_count, int(mem_gb // gb_per_job)))


def build_minutes(ops: str, jobs: int, n_archs: int = 1) -> int:
    """A rough build time on idle cores: CPU ops 15 minutes on 2 cores; CUDA ops 25 minutes
    for one architecture on 2 cores, 6 more per further architecture; both shrink with the
    parallel jobs down to the slowest file's time."""
    if ops == 'cpu':
        return max(2, round(CPU_JOB_MINUTES / jobs))
    extra = n_archs - 1
    return round(max(CUDA_MIN_MINUTES + CUDA_MIN_ARCH_MINUTES * extra,
                     (CUDA_JOB_MINUTES + CUDA_ARCH_JOB_MINUTES * extra) / jobs))


def pip_toolkit_packages(cuda_version: str) -> List[str]:
    """NVIDIA's PyPI wheels that make a CUDA_HOME for ``cuda_version`` (``'13.0'``): the
    compiler, its C runtime headers (crt), the device compiler (nvvm), the runtime (cudart)
    and CCCL (thrust/cub). CUDA 13 wheels have plain names; CUDA 11/12 ones end in -cu11/-cu12
    (and ship crt and nvvm inside nvcc)."""
    major = cuda_version.split('.')[0]
    pin = f'=={cuda_version}.*'
    if int(major) >= 13:
        names = ['nvidia-cuda-nvcc', 'nvidia-cuda-crt', 'nvidia-nvvm', 'nvidia-cuda-runtime',
                 'nvidia-cuda-cccl']
    else:
        names = [f'nvidia-cuda-nvcc-cu{major}', f'nvidia-cuda-runtime-cu{major}',
                 f'nvidia-cuda-cccl-cu{major}']
    return [name + pin for name in names]


# How to retry once a fix is in: an earlier fallback to CPU ops is not retried otherwise.
RETRY = ('FORCE_CUDA=1 make setup (it rebuilds and replaces the CPU-only mmcv; '
         f'see {README_HINT})')


def _install_toolkit_fix(torch_cuda: str, pip_packages: Sequence[str]) -> str:
    """No nvcc of torch's CUDA major version: install one."""
    major = torch_cuda.split('.')[0]
    return (f'to build mmcv with CUDA ops, install a CUDA {major}.x toolkit (nvcc {torch_cuda} '
            'matches torch; e.g. from NVIDIA\'s CUDA apt repository: apt-get install '
            f'cuda-nvcc-{torch_cuda.replace(".", "-")} '
            f'cuda-cudart-dev-{torch_cuda.replace(".", "-")}; or from PyPI: '
            f'.venv/bin/pip install {" ".join(shlex.quote(p) for p in pip_packages)}), set '
            'CUDA_HOME to it if it is not in /usr/local/cuda, then run ' + RETRY)


def _failed_build_fix(toolkit: Toolkit) -> str:
    """A usable toolkit, yet the build failed: its log says why (installing nvcc again would
    not help). setup.sh keeps that log apart from the CPU build's that follows."""
    return (f'the CUDA build with nvcc {toolkit.version} from {toolkit.home} failed (the end '
            'of .venv/setup-logs/mmcv-build-cuda.log says why); once that is fixed, run ' + RETRY)


# CUDA components by the prefix of their headers' names (cusparseLt.h before cusparse.h).
_CUDA_COMPONENTS = ('cusparselt', 'cusparse', 'cublas', 'cusolver', 'curand', 'cufft',
                    'cufile', 'cupti', 'nvrtc', 'nvtx', 'nvjitlink', 'cudnn', 'nccl', 'nvshmem',
                    'nvml')
# NVIDIA's apt packages with a component's headers ({v}: '13-0'); others are in
# cuda-libraries-dev-{v}.
_APT_DEV_PACKAGES = {
    'cublas': 'libcublas-dev-{v}', 'cusparse': 'libcusparse-dev-{v}',
    'cusolver': 'libcusolver-dev-{v}', 'curand': 'libcurand-dev-{v}',
    'cufft': 'libcufft-dev-{v}', 'cufile': 'libcufile-dev-{v}',
    'nvjitlink': 'libnvjitlink-dev-{v}', 'nvrtc': 'cuda-nvrtc-dev-{v}',
    'cupti': 'cuda-cupti-dev-{v}', 'nvtx': 'cuda-nvtx-{v}', 'nvml': 'cuda-nvml-dev-{v}'}


def cuda_component(header: str) -> Optional[str]:
    """The CUDA component a header belongs to: ``'cusparse'`` for ``cusparse.h``,
    ``'cublas'`` for ``cublasLt.h``, ``'nvtx'`` for ``nvtx3/nvToolsExt.h``; None if unknown."""
    name = header.lower()
    return next((c for c in _CUDA_COMPONENTS if name.startswith(c)), None)


def torch_requirement_for(header: str, requirements: Sequence[str]) -> Optional[str]:
    """torch's own requirement that installs ``header``, as a pip specifier, or None.

    Args:
        header: The header as included, e.g. ``'cusparse.h'``.
        requirements: torch's CUDA requirements (:attr:`Facts.torch_requirements`), e.g.
            ``'cuda-toolkit[cublas,cusparse]==13.0.3; platform_system == "Linux"'`` (CUDA 13:
            one package with an extra per component) or ``'nvidia-cusparse-cu12==12.5.8.93'``.

    Returns:
        ``'cuda-toolkit[cusparse]==13.0.3'``, ``'nvidia-cusparse-cu12==12.5.8.93'``, ...
    """
    component = cuda_component(header)
    if component is None:
        return None
    for requirement in requirements:
        match = re.match(r'\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?\s*([^;]*)', requirement)
        if not match:
            continue
        name, extras, spec = match.group(1).lower(), match.group(2), match.group(3).strip()
        if name == 'cuda-toolkit' and extras and \
                component in [e.strip().lower() for e in extras.split(',')]:
            return f'cuda-toolkit[{component}]{spec}'
        if re.fullmatch(rf'nvidia-(cuda-)?{component}(-cu\d+)?', name):
            return name + spec
    return None


def _headers_fix(toolkit: Toolkit, facts: Facts) -> str:
    """The one fix for a toolkit that torch's CUDA headers do not compile with."""
    if toolkit.header_error:
        return (f'make torch\'s CUDA headers compile with nvcc {toolkit.version} from '
                f'{toolkit.home} ({toolkit.header_error}) or set CUDA_HOME to another CUDA '
                f'{toolkit.major}.x toolkit, then run ' + RETRY)
    header = toolkit.missing_header
    requirement = torch_requirement_for(header, facts.torch_requirements)
    if requirement:  # torch from PyPI: its own wheel holds the header
        return (f'install {header} with the package torch {facts.torch_version} requires for '
                f'it: .venv/bin/pip install {shlex.quote(requirement)}, then run ' + RETRY)
    version = (facts.torch_cuda or toolkit.version).replace('.', '-')
    package = _APT_DEV_PACKAGES.get(cuda_component(header) or '',
                                    'cuda-libraries-dev-{v}').format(v=version)
    return (f'install {header} into {toolkit.home} (NVIDIA\'s CUDA apt repository: apt-get '
            f'install {package}), then run ' + RETRY)


def _blocked_reason(toolkit: Toolkit, facts: Facts) -> str:
    if toolkit.header_error:
        return (f'torch\'s CUDA headers do not compile with nvcc {toolkit.version} from '
                f'{toolkit.home}: {toolkit.header_error}')
    wheels = (f"torch's nvidia-* wheels in {facts.cuda_wheels}" if facts.cuda_wheels
              else "torch's nvidia-* wheels (none installed)")
    return (f'torch\'s CUDA headers include {toolkit.missing_header}, which is neither in '
            f'{toolkit.home}/include (nvcc {toolkit.version}) nor in {wheels}')


def cuda_wanted(force_cuda: Optional[str], gpus: Sequence[Tuple[int, int]],
                torch_cuda: Optional[str]) -> Tuple[bool, str]:
    """Whether CUDA ops are wanted, and why (for the plan's message).

    ``FORCE_CUDA`` decides when set; else a GPU visible to a CUDA build of torch.
    """
    if force_cuda == '0':
        return False, 'FORCE_CUDA=0'
    if force_cuda == '1':
        return True, 'FORCE_CUDA=1'
    if gpus:
        if torch_cuda is None:
            return False, 'torch is a CPU-only build'
        return True, 'a CUDA GPU is visible to torch'
    return False, 'no CUDA GPU visible to torch'


def make_plan(facts: Facts, cpu_fallback: bool = False) -> Plan:
    """Decide how to build mmcv on the machine ``facts`` describes.

    Args:
        facts: What the machine offers.
        cpu_fallback: CUDA ops were wanted but could not be built (no toolkit could be
            installed, torch's CUDA headers miss a header, or the CUDA build failed): plan CPU
            ops, saying why and how to retry (the CUDA plan's fix).

    Returns:
        The plan; ``plan.error`` is set when nothing sensible can be built.
    """
    want_cuda, why = cuda_wanted(facts.force_cuda, facts.gpus, facts.torch_cuda)
    if want_cuda and facts.torch_cuda is None:
        return Plan(ops='cpu', cache_key=cache_key(facts.torch_version, 'cpu'),
                    error=f'FORCE_CUDA=1, but torch {facts.torch_version} is a CPU-only build: '
                    'install a CUDA build of torch into .venv (requirements/torch.txt) or '
                    'unset FORCE_CUDA')

    if want_cuda and not cpu_fallback:
        return _cuda_plan(facts, why)
    fallback_fix = None
    if cpu_fallback:
        fallback_fix = _cuda_plan(facts, why).fix if facts.torch_cuda else ''
    return _cpu_plan(facts, why, fallback_fix)


def _cpu_plan(facts: Facts, why: str, fallback_fix: Optional[str] = None) -> Plan:
    """CPU ops; ``fallback_fix`` (the CUDA plan's fix) when they replace CUDA ops that could
    not be built."""
    jobs = facts.max_jobs or max_jobs(facts.cpu_count, facts.mem_gb, GB_PER_CPU_JOB)
    env = {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '0', 'MAX_JOBS': str(jobs)}
    if facts.gpus:
        # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU, whatever FORCE_CUDA says.
        env['CUDA_VISIBLE_DEVICES'] = ''
    minutes = build_minutes('cpu', jobs)
    fix = ''
    if fallback_fix is not None:
        why = 'CUDA ops could not be built'
        fix = fallback_fix
    elif facts.gpus and facts.torch_cuda:  # FORCE_CUDA=0 on a GPU machine
        fix = 'unset FORCE_CUDA (or FORCE_CUDA=1) and run make setup again for CUDA ops'
    message = (f'building mmcv {MMCV_VERSION} with CPU ops ({why}; {jobs} parallel jobs, '
               f'about {minutes} minutes)')
    return Plan(ops='cpu', cache_key=cache_key(facts.torch_version, 'cpu'), max_jobs=jobs,
                env=env, message=message, fix=fix)


def _cuda_plan(facts: Facts, why: str) -> Plan:
    torch_cuda = facts.torch_cuda
    if facts.arch_list:
        archs = ' '.join(facts.arch_list.replace(';', ' ').split())
        where = 'TORCH_CUDA_ARCH_LIST'
    elif facts.gpus:
        archs = arch_list_of(facts.gpus)
        where = 'the GPUs present'
    else:  # FORCE_CUDA=1 on a machine without GPU: what torch itself is built for
        archs = _arch_list_of_torch(facts.torch_arch_list)
        where = "torch's own architecture list"
    jobs = facts.max_jobs or max_jobs(facts.cpu_count, facts.mem_gb, GB_PER_CUDA_JOB)
    packages = pip_toolkit_packages(torch_cuda)
    major = torch_cuda.split('.')[0]
    matching = [t for t in facts.toolkits if t.major == major]
    toolkit = next((t for t in matching if t.usable), None)
    plan = Plan(ops='cuda', cache_key=cache_key(facts.torch_version, 'cuda', torch_cuda, archs),
                cuda_version=torch_cuda, arch_list=archs, max_jobs=jobs, pip_packages=packages,
                pip_cuda_home=facts.pip_cuda_home)
    minutes = build_minutes('cuda', jobs, len(archs.split()) or 1)
    if toolkit is None and matching:
        # NVIDIA's compiler wheels would not help: they lack the same headers
        plan.blocked = _blocked_reason(matching[0], facts)
        plan.fix = _headers_fix(matching[0], facts)
        plan.message = f'{why}, but {plan.blocked}'
        return plan
    if toolkit is None:
        plan.needs_pip_toolkit = True
        plan.fix = _install_toolkit_fix(torch_cuda, packages)
        others = ', '.join(f'{t.version} in {t.home}' for t in facts.toolkits) or 'none'
        plan.message = (f'{why}, but no nvcc {major}.x (torch has CUDA {torch_cuda}; nvcc found: '
                        f'{others}): installing NVIDIA\'s compiler wheels from PyPI '
                        f'({" ".join(packages)})')
        return plan
    plan.cuda_home = toolkit.home
    plan.fix = _failed_build_fix(toolkit)
    plan.env = {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '1', 'MAX_JOBS': str(jobs),
                'TORCH_CUDA_ARCH_LIST': archs, 'CUDA_HOME': toolkit.home}
    filled = ''
    if toolkit.include_fill:
        # searched after the toolkit's own include folder: the fill only adds what it lacks
        plan.env['CPATH'] = os.pathsep.join(
            [p for p in (facts.cpath or '').split(os.pathsep) if p] + list(toolkit.include_fill))
        filled = (f' and the headers it lacks ({" ".join(toolkit.filled_headers)}) from '
                  f'torch\'s wheels in {" ".join(toolkit.include_fill)}')
    plan.message = (f'building mmcv {MMCV_VERSION} with CUDA ops ({why}) for compute capability '
                    f'{archs} ({where}) with nvcc {toolkit.version} from {toolkit.home}{filled}; '
                    f'{jobs} parallel jobs, about {minutes} minutes')
    return plan


# ------------------------------------------------------------------------- reading facts
def _run_nvcc_version(nvcc: str) -> str:
    try:
        return subprocess.run([nvcc, '--version'], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ''


def candidate_cuda_homes(env: Mapping[str, str], torch_cuda: Optional[str],
                         pip_cuda_home: Optional[str],
                         which: Callable[[str], Optional[str]] = shutil.which) -> List[str]:
    """Folders that may hold a CUDA toolkit, most wanted first, each once: ``CUDA_HOME``,
    ``CUDA_PATH``, the ``nvcc`` on PATH, ``/usr/local/cuda-<torch's CUDA>``,
    ``/usr/local/cuda``, then the one assembled from PyPI wheels."""
    homes = [env.get('CUDA_HOME'), env.get('CUDA_PATH')]
    nvcc = which('nvcc')
    if nvcc:
        homes.append(osp.dirname(osp.dirname(osp.realpath(nvcc))))
    if torch_cuda:
        homes.append(f'/usr/local/cuda-{torch_cuda}')
    homes += ['/usr/local/cuda', pip_cuda_home]
    seen = []
    for home in homes:
        if home and home not in seen:
            seen.append(home)
    return seen


def find_toolkits(homes: Sequence[str],
                  nvcc_output: Callable[[str], str] = _run_nvcc_version) -> List[Toolkit]:
    """The usable toolkits among ``homes``: ``bin/nvcc`` runs and ``include/cuda_runtime.h``
    exists (a wrapper ``/usr/local/bin/nvcc`` has no headers beside it: skipped)."""
    found, seen = [], set()
    for home in homes:
        nvcc = osp.join(home, 'bin', 'nvcc')
        if osp.realpath(home) in seen:  # /usr/local/cuda -> cuda-13.0: one toolkit
            continue
        seen.add(osp.realpath(home))
        if not (os.access(nvcc, os.X_OK) and
                osp.isfile(osp.join(home, 'include', 'cuda_runtime.h'))):
            continue
        version = parse_nvcc_version(nvcc_output(nvcc))
        if version:
            found.append(Toolkit(home, version))
    return found


# ------------------------------------------------------- torch's CUDA headers and a toolkit
# The torch headers CUDA extensions include (mmcv 2.1.0's ops include each of them). What they
# need from outside torch is not listed here: nvcc's preprocessor follows torch's include tree,
# so a header a new torch starts to include is checked without a change here.
TORCH_CUDA_EXTENSION_HEADERS = ('ATen/cuda/CUDAContext.h', 'c10/cuda/CUDAGuard.h',
                                'ATen/cuda/CUDAApplyUtils.cuh', 'ATen/cuda/DeviceUtils.cuh',
                                'THC/THCAtomics.cuh')
# gcc: "fatal error: cusparse.h: No such file or directory"; clang: "fatal error: 'cusparse.h'
# file not found" (the preprocessor runs with LC_ALL=C).
_MISSING_HEADER = re.compile(
    r"fatal error: (?:'([^']+)' file not found|([^\s:]+): No such file or directory)")

# (dependency listing or None, error output) of a preprocessor run; see _nvcc_dependencies.
Dependencies = Callable[[str, Sequence[str], Sequence[str]], Tuple[Optional[str], str]]


def torch_include_dirs(torch_dir: str) -> List[str]:
    """The include folders torch's extension builder passes (``torch/include`` and the C++
    API's), for a torch package folder ``torch_dir``."""
    include = osp.join(torch_dir, 'include')
    return [include, osp.join(include, 'torch', 'csrc', 'api', 'include')]


def _wheel_roots(nvidia_dir: str, cuda_version: str) -> List[str]:
    """The folders of ``site-packages/nvidia`` for torch's CUDA major version: all but the
    ``cu<N>`` folders of other majors (``cu12`` beside ``cu13``)."""
    major = cuda_version.split('.')[0]
    return [osp.join(nvidia_dir, name) for name in sorted(os.listdir(nvidia_dir))
            if osp.isdir(osp.join(nvidia_dir, name)) and
            not (re.fullmatch(r'cu\d+', name) and name != f'cu{major}')]


def wheel_include_dirs(nvidia_dir: Optional[str], cuda_version: str) -> List[str]:
    """The include folders of torch's ``nvidia-*`` wheels (``nvidia/cu13/include``,
    ``nvidia/cudnn/include``, ... or CUDA 12's ``nvidia/cusparse/include``, ...)."""
    if not nvidia_dir or not osp.isdir(nvidia_dir):
        return []
    return [osp.join(root, 'include') for root in _wheel_roots(nvidia_dir, cuda_version)
            if osp.isdir(osp.join(root, 'include'))]


def missing_header_of(output: str) -> Optional[str]:
    """The header a preprocessor's fatal error names, e.g. ``'cusparse.h'``, else None."""
    match = _MISSING_HEADER.search(output)
    return (match.group(1) or match.group(2)) if match else None


def _first_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    line = next((l for l in lines if 'error' in l), lines[-1] if lines else 'no output')
    return line[:300]


def _nvcc_dependencies(nvcc: str, torch_includes: Sequence[str],
                       cpath: Sequence[str]) -> Tuple[Optional[str], str]:
    """Preprocess :data:`TORCH_CUDA_EXTENSION_HEADERS` with ``nvcc -M`` as a ``.cu`` file
    (both its host and device passes), ``cpath`` as CPATH.

    Returns:
        (the make-style list of the files read, '') or (None, the error output).
    """
    env = dict(os.environ, LC_ALL='C')
    env.pop('CPATH', None)
    if cpath:
        env['CPATH'] = os.pathsep.join(cpath)
    with tempfile.TemporaryDirectory(prefix='torch-cuda-headers-') as tmp:
        source, deps = osp.join(tmp, 'probe.cu'), osp.join(tmp, 'probe.d')
        with open(source, 'w') as f:
            f.writelines(f'#include <{h}>\n' for h in TORCH_CUDA_EXTENSION_HEADERS)
        # as torch's extension builder: its includes, then the toolkit's; C++20 (torch >= 2.5)
        toolkit_include = osp.join(osp.dirname(osp.dirname(nvcc)), 'include')
        cmd = [nvcc, '-M', '-std=c++20', *(f'-I{d}' for d in torch_includes),
               f'-I{toolkit_include}', source, '-o', deps]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            return None, f'{nvcc} -M: {err}'
        if result.returncode != 0 or not osp.isfile(deps):
            return None, result.stderr + result.stdout
        with open(deps) as f:
            return f.read(), ''


def _headers_read_from(deps: str, folders: Sequence[str], toolkit_home: str) -> Tuple[str, ...]:
    """The headers in a dependency listing that were read from ``folders`` and that the
    toolkit's ``include/`` does not hold, relative to their folder."""
    found = set()
    for path in deps.replace('\\\n', ' ').split():
        for folder in folders:
            if path.startswith(folder.rstrip('/') + '/'):
                rel = path[len(folder.rstrip('/')) + 1:]
                if not osp.isfile(osp.join(toolkit_home, 'include', rel)):
                    found.add(rel)
    return tuple(sorted(found))


def check_torch_headers(toolkit: Toolkit, torch_includes: Sequence[str],
                        wheel_includes: Sequence[str], cpath: Sequence[str] = (),
                        dependencies: Dependencies = _nvcc_dependencies) -> Toolkit:
    """Whether torch's CUDA headers compile against ``toolkit``, and what fills its gaps.

    The preprocessor runs on :data:`TORCH_CUDA_EXTENSION_HEADERS`; for each header it misses,
    the first of torch's wheel include folders holding it joins CPATH, and it runs again
    (a minimal toolkit lacks cusparse.h, cublas_v2.h, cusolverDn.h: one folder, ``cu13/include``,
    fills them all).

    Args:
        toolkit: A toolkit of torch's CUDA major version.
        torch_includes: :func:`torch_include_dirs`.
        wheel_includes: :func:`wheel_include_dirs`, in order of preference.
        cpath: The user's ``CPATH`` folders (searched first; the build keeps them).
        dependencies: Runs the preprocessor (tests pass a stand-in).

    Returns:
        ``toolkit`` with ``include_fill`` and ``filled_headers`` set, or ``missing_header``
        (found nowhere) or ``header_error`` (another failure).
    """
    fill: List[str] = []
    while True:
        deps, error = dependencies(toolkit.nvcc, torch_includes, [*cpath, *fill])
        if deps is not None:
            return replace(toolkit, include_fill=tuple(fill),
                           filled_headers=_headers_read_from(deps, fill, toolkit.home))
        header = missing_header_of(error)
        if header is None:
            return replace(toolkit, header_error=_first_error(error))
        source = next((d for d in wheel_includes
                       if d not in fill and osp.isfile(osp.join(d, header))), None)
        if source is None:
            return replace(toolkit, include_fill=tuple(fill), missing_header=header)
        fill.append(source)


def check_toolkits(toolkits: Sequence[Toolkit], cuda_version: str, torch_includes: Sequence[str],
                   wheel_includes: Sequence[str], cpath: Sequence[str] = (),
                   dependencies: Dependencies = _nvcc_dependencies) -> List[Toolkit]:
    """:func:`check_torch_headers` for the toolkits of torch's CUDA major version, in order,
    until one is usable (the plan takes the first usable one; later ones stay unchecked)."""
    major = cuda_version.split('.')[0]
    checked, done = [], False
    for toolkit in toolkits:
        if not done and toolkit.major == major:
            toolkit = check_torch_headers(toolkit, torch_includes, wheel_includes, cpath,
                                          dependencies)
            done = toolkit.usable
        checked.append(toolkit)
    return checked


def usable_cores() -> int:
    """The cores this process may run on (as ``nproc``: a container's share), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory_gb(meminfo: str = '/proc/meminfo') -> float:
    """``MemAvailable`` (else ``MemTotal``) in GB; 4 when unreadable."""
    try:
        with open(meminfo) as f:
            fields = dict(line.split(':', 1) for line in f if ':' in line)
    except OSError:
        return 4.0
    for name in ('MemAvailable', 'MemTotal'):
        if name in fields:
            return int(fields[name].split()[0]) / 1024 ** 2
    return 4.0


def gather_facts(pip_cuda_home: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None) -> Facts:
    """Read the machine: torch (imported here), the toolkits, cores, memory, variables.

    Where CUDA ops are wanted, the toolkits of torch's CUDA major version are checked against
    torch's CUDA headers (:func:`check_toolkits`, seconds); a CPU plan skips that.
    """
    import torch
    env = os.environ if env is None else env
    gpus: Tuple[Tuple[int, int], ...] = ()
    if torch.cuda.is_available():
        gpus = tuple(tuple(torch.cuda.get_device_capability(i))
                     for i in range(torch.cuda.device_count()))
    torch_cuda = torch.version.cuda
    torch_arch_list = tuple(torch.cuda.get_arch_list()) if torch_cuda else ()
    homes = candidate_cuda_homes(env, torch_cuda, pip_cuda_home)
    toolkits = find_toolkits(homes)
    torch_dir = osp.dirname(torch.__file__)
    cuda_wheels = osp.join(osp.dirname(torch_dir), 'nvidia')
    cuda_wheels = cuda_wheels if osp.isdir(cuda_wheels) else None
    cpath = env.get('CPATH') or None
    force_cuda = env.get('FORCE_CUDA') or None
    if torch_cuda and cuda_wanted(force_cuda, gpus, torch_cuda)[0]:
        toolkits = check_toolkits(toolkits, torch_cuda, torch_include_dirs(torch_dir),
                                  wheel_include_dirs(cuda_wheels, torch_cuda),
                                  [p for p in (cpath or '').split(os.pathsep) if p])
    jobs = env.get('MAX_JOBS', '')
    return Facts(torch_version=torch.__version__, torch_cuda=torch_cuda, gpus=gpus,
                 toolkits=tuple(toolkits), cpu_count=usable_cores(),
                 mem_gb=available_memory_gb(), force_cuda=force_cuda,
                 max_jobs=int(jobs) if jobs.isdigit() and int(jobs) > 0 else None,
                 arch_list=env.get('TORCH_CUDA_ARCH_LIST') or None,
                 torch_arch_list=torch_arch_list, pip_cuda_home=pip_cuda_home, cpath=cpath,
                 cuda_wheels=cuda_wheels, torch_requirements=_torch_cuda_requirements())


def _torch_cuda_requirements() -> Tuple[str, ...]:
    """torch's requirements that bring CUDA libraries (``cuda-toolkit[...]``, ``nvidia-*``)."""
    import importlib.metadata
    try:
        requires = importlib.metadata.requires('torch') or []
    except importlib.metadata.PackageNotFoundError:  # a torch built from source
        return ()
    return tuple(r for r in requires if re.match(r'\s*(nvidia-|cuda-toolkit\b)', r))


def facts_from_json(data: Mapping) -> Facts:
    """:class:`Facts` from ``--json``'s ``facts`` (another machine's, or made up)."""
    data = dict(data)
    data['gpus'] = tuple(tuple(cap) for cap in data.get('gpus', ()))
    data['toolkits'] = tuple(
        Toolkit(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
        for t in data.get('toolkits', ()))
    data['torch_requirements'] = tuple(data.get('torch_requirements', ()))
    data['torch_arch_list'] = tuple(data.get('torch_arch_list', ()))
    return Facts(**data)


# ------------------------------------------------------------ a CUDA_HOME from PyPI wheels
def _link_tree(sources: Sequence[str], dest: str) -> None:
    """Make ``dest`` the union of the folders ``sources``: symbolic links to their entries,
    sub-folders present in several sources merged the same way."""
    os.makedirs(dest, exist_ok=True)
    entries: Dict[str, List[str]] = {}
    for src in sources:
        for name in sorted(os.listdir(src)):
            entries.setdefault(name, []).append(osp.join(src, name))
    for name, paths in entries.items():
        target = osp.join(dest, name)
        dirs = [p for p in paths if osp.isdir(p)]
        if len(dirs) > 1:
            _link_tree(dirs, target)
        elif not osp.lexists(target):
            os.symlink(paths[0], target)


def assemble_cuda_home(nvidia_dir: str, dest: str, cuda_version: str) -> str:
    """Lay out NVIDIA's PyPI wheels as a CUDA_HOME that torch's extension builder takes.

    The wheels install under ``site-packages/nvidia/``: CUDA 13's all in ``cu13/`` (``bin/nvcc``,
    ``include/``, ``lib/``, ``nvvm/``), CUDA 12's one folder per component (``cuda_nvcc/``,
    ``cuda_runtime/``, ...). ``dest`` gets ``bin/``, ``include/``, ``nvvm/`` as the union of
    theirs and ``lib64/`` with their libraries, plus the unversioned ``libcudart.so`` (&c.)
    names the linker looks for, which the wheels do not ship.

    Args:
        nvidia_dir: ``site-packages/nvidia`` of the environment the wheels went into.
        dest: The folder to make (replaced when it exists).
        cuda_version: torch's CUDA version, e.g. ``'13.0'``: folders of another major
            (``cu12`` beside ``cu13``) are left out.

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: No ``bin/nvcc`` or ``include/cuda_runtime.h`` among the wheels.
    """
    roots = _wheel_roots(nvidia_dir, cuda_version)
    if osp.lexists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    for part in ('bin', 'include', 'nvvm'):
        sources = [osp.join(r, part) for r in roots if osp.isdir(osp.join(r, part))]
        if sources:
            _link_tree(sources, osp.join(dest, part))
    lib64 = osp.join(dest, 'lib64')
    _link_tree([osp.join(r, d) for r in roots for d in ('lib', 'lib64')
                if osp.isdir(osp.join(r, d))], lib64)
    for name in os.listdir(lib64):
        match = re.fullmatch(r'(lib[\w+-]+\.so)\.\d+', name)
        if match and not osp.lexists(osp.join(lib64, match.group(1))):
            os.symlink(name, osp.join(lib64, match.group(1)))
    for needed in ('bin/nvcc', 'include/cuda_runtime.h'):
        if not osp.exists(osp.join(dest, needed)):
            raise FileNotFoundError(f'{needed} is not in the NVIDIA wheels under {nvidia_dir} '
                                    f'(were {" ".join(pip_toolkit_packages(cuda_version))} '
                                    'installed?)')
    return dest


# ------------------------------------------------------------------------- command line
def shell_lines(plan: Plan) -> str:
    """The plan as bash assignments for ``eval`` in setup.sh (values quoted)."""
    values = {
        'MMCV_OPS': plan.ops,
        'MMCV_CACHE_KEY': plan.cache_key,
        'MMCV_CUDA_VERSION': plan.cuda_version,
        'MMCV_ARCH_LIST': plan.arch_list,
        'MMCV_CUDA_HOME': plan.cuda_home or '',
        'MMCV_NEEDS_PIP_TOOLKIT': '1' if plan.needs_pip_toolkit else '0',
        'MMCV_PLAN_MESSAGE': plan.message,
        'MMCV_PLAN_FIX': plan.fix,
        'MMCV_PLAN_ERROR': plan.error,
        'MMCV_PLAN_BLOCKED': plan.blocked,
    }
    lines = [f'{name}={shlex.quote(value)}' for name, value in values.items()]
    lines.append('MMCV_PIP_PACKAGES=(' + ' '.join(map(shlex.quote, plan.pip_packages)) + ')')
    lines.append('MMCV_BUILD_ENV=(' + ' '.join(
        shlex.quote(f'{k}={v}') for k, v in plan.env.items()) + ')')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the plan (``--json``, ``--shell``, else its message), or assemble a CUDA_HOME."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--json', action='store_true', help='print the facts and the plan')
    parser.add_argument('--shell', action='store_true',
                        help='print bash assignments (MMCV_OPS=..., MMCV_BUILD_ENV=(...))')
    parser.add_argument('--pip-cuda-home', help='where a toolkit from PyPI wheels is assembled')
    parser.add_argument('--cpu-fallback', action='store_true',
                        help='CUDA ops failed: plan CPU ops and say how to retry')
    parser.add_argument('--assemble-cuda-home', metavar='DIR',
                        help='lay out the nvidia-* wheels of this Python as a CUDA_HOME in DIR')
    parser.add_argument('--cuda-version', help="with --assemble-cuda-home: torch's CUDA version")
    parser.add_argument('--facts', metavar='FILE.json',
                        help="plan for the machine FILE describes (--json's 'facts', e.g. of "
                        'another machine) instead of this one')
    args = parser.parse_args(argv)
    if args.assemble_cuda_home:
        import site
        nvidia = next((osp.join(p, 'nvidia') for p in site.getsitepackages()
                       if osp.isdir(osp.join(p, 'nvidia'))), None)
        if nvidia is None:
            print('no site-packages/nvidia: install the nvidia-cuda-* wheels first',
                  file=sys.stderr)
            return 1
        try:
            print(assemble_cuda_home(nvidia, args.assemble_cuda_home, args.cuda_version))
        except (FileNotFoundError, OSError) as err:
            print(err, file=sys.stderr)
            return 1
        return 0
    if args.facts:
        with open(args.facts) as f:
            facts = facts_from_json(json.load(f))
    else:
        facts = gather_facts(args.pip_cuda_home)
    plan = make_plan(facts, cpu_fallback=args.cpu_fallback)
    if args.json:
        print(json.dumps(dict(facts=asdict(facts), plan=asdict(plan)), indent=2))
    elif args.shell:
        print(shell_lines(plan))
    else:
        print(plan.error or plan.message)
        if plan.fix and (plan.ops == 'cpu' or plan.blocked):
            print(plan.fix)
    return 0


if __name__ == '__main__':
    sys.exit(main())
