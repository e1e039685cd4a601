"""ExecuTorch's kernel of SS2D's scan: built from ``csrc/ss2d_scan.cpp``, cached, loaded.

An ExecuTorch export with ``scan_kernel`` (``export_executorch.py --scan-kernel``) calls
``mmmobilemamba::ss2d_scan_graph.out`` once per SS2D (:mod:`mmmobilemamba.ops.graph_scan_op`)
instead of running the scan as ~70 XNNPACK operators; everything else stays in XNNPACK. A
runtime runs such a program only with the kernel registered: here the kernel is compiled
against the installed ``executorch`` package (its headers and ``libexecutorch.so``, into
which the library registers the kernel when it is loaded), once per source, compiler and
machine, under ``~/.cache/mmmobilemamba/kernels`` (``$MMM_CACHE``), and loaded into the
process before a program that calls it (:func:`load_scan_kernel`). On a phone the same source
is compiled into the application with ExecuTorch (docs/deployment.md).

The build is for this machine's CPU (``-march=native``): the cache key holds the CPU's
identity, so a home directory shared between machines gets one library per kind of CPU.
"""
import ctypes
import functools
import hashlib
import mmap
import os
import os.path as osp
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import List, Union

__all__ = ['KERNEL_OPERATOR', 'SOURCE', 'ScanKernelError', 'build_scan_kernel',
           'load_scan_kernel', 'load_scan_kernel_if_called', 'program_calls_scan_kernel']

KERNEL_OPERATOR = 'mmmobilemamba::ss2d_scan_graph.out'
SOURCE = osp.join(osp.dirname(__file__), 'csrc', 'ss2d_scan.cpp')
# -fno-trapping-math lets the compiler vectorise the min/max selects of exp and softplus
_OPTIMISATION = ('-O3', '-march=native', '-fno-trapping-math')
# what the executorch package's CMake config asks of a consumer (EXECUTORCH_COMPILE_DEFINITIONS;
# the kernel shares the package's thread pool)
_DEFINES = ('-DC10_USING_CUSTOM_GENERATED_MACROS', '-DET_EVENT_TRACER_ENABLED',
            '-DET_USE_THREADPOOL')
_LOCK = threading.Lock()
_LOADED: dict = {}


class ScanKernelError(RuntimeError):
    """The scan kernel could not be built or loaded; the message says why and what to do."""


def _executorch_root() -> str:
    try:
        import executorch
    except ImportError as err:
        raise ScanKernelError(
            f'the scan kernel is built against the executorch package, which does not import '
            f'({err}): pip install -r requirements/deploy.txt (`make setup` installs it)') from err
    root = list(executorch.__path__)[0]
    for needed in ('include', 'lib'):
        if not osp.isdir(osp.join(root, needed)):
            raise ScanKernelError(
                f'the installed executorch ({root}) has no {needed}/ directory, so no kernel '
                f'can be built against it: install the wheel the project pins '
                f'(requirements/deploy.txt), or export without --scan-kernel')
    return root


def _compiler() -> str:
    for candidate in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
        if candidate and shutil.which(candidate):
            return candidate
    raise ScanKernelError('building the scan kernel needs a C++17 compiler (g++ or clang++) '
                          'on PATH, or its path in $CXX: install one (Debian: apt install g++) '
                          'or export without --scan-kernel')


def _command(compiler: str, root: str, output: str) -> List[str]:
    lib = osp.join(root, 'lib')
    includes = [osp.join(root, 'include'),
                osp.join(root, 'include', 'executorch', 'runtime', 'core', 'portable_type',
                         'c10')]
    return [compiler, '-std=c++17', '-shared', '-fPIC', *_OPTIMISATION, *_DEFINES,
            *[f'-I{path}' for path in includes], SOURCE, '-o', output, f'-L{lib}',
            '-lexecutorch', '-lexecutorch_threadpool', f'-Wl,-rpath,{lib}']


@functools.lru_cache(maxsize=None)
def _compiler_identity(compiler: str) -> str:
    """``compiler --version`` (asked once per process: every export and session looks up the
    library)."""
    try:
        return subprocess.run([compiler, '--version'], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return compiler


@functools.lru_cache(maxsize=None)
def _cpu_identity() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags', 'Features',
                                                            'CPU part'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> str:
    base = os.environ.get('MMM_CACHE') or osp.join(osp.expanduser('~'), '.cache',
                                                   'mmmobilemamba')
    return osp.join(base, 'kernels')


def _library_path(compiler: str, root: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        et_version = version('executorch')
    except PackageNotFoundError:
        et_version = root
    key = hashlib.sha256()
    with open(SOURCE, 'rb') as f:
        key.update(f.read())
    for part in (' '.join(_command(compiler, root, '')), et_version, _compiler_identity(compiler),
                 _cpu_identity(), platform.machine()):
        key.update(part.encode())
    return osp.join(_cache_dir(), f'libmmmobilemamba_scan-{key.hexdigest()[:16]}.so')


def build_scan_kernel() -> str:
    """Compile the kernel library (once: a cached build is reused) and return its path.

    Raises:
        ScanKernelError: no executorch package with headers, no compiler, or the compiler
            failed (its output is in the message).
    """
    root = _executorch_root()
    compiler = _compiler()
    path = _library_path(compiler, root)
    if osp.isfile(path):
        return path
    os.makedirs(osp.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix='.building-', suffix='.so', dir=osp.dirname(path))
    os.close(fd)
    try:
        done = subprocess.run(_command(compiler, root, partial), capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise ScanKernelError(
                f'building the scan kernel failed ({compiler}, exit {done.returncode}):\n'
                f'{done.stderr.strip()[-4000:]}\nExport without --scan-kernel to run the '
                f'scan as XNNPACK operators instead.')
        os.replace(partial, path)  # atomic: a concurrent build leaves one whole library
    finally:
        if osp.exists(partial):
            os.remove(partial)
    return path


def load_scan_kernel() -> str:
    """Register the kernel in this process's ExecuTorch runtime (building it if needed);
    a second call does nothing. Returns the library's path.

    Raises:
        ScanKernelError: see :func:`build_scan_kernel`, or the library failed to load.
    """
    with _LOCK:
        if 'path' in _LOADED:
            return _LOADED['path']
        path = build_scan_kernel()
        # the runtime's library first, global: the kernel registers into its registry
        from executorch.extension.pybindings import portable_lib  # noqa: F401
        try:
            _LOADED['library'] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise ScanKernelError(f'loading the scan kernel {path} failed ({err}): delete it '
                                  f'to have it rebuilt') from err
        _LOADED['path'] = path
        return path


def program_calls_scan_kernel(program: Union[bytes, str]) -> bool:
    """Whether an ExecuTorch program (its bytes or path) calls the scan kernel: its operator
    table names ``mmmobilemamba::ss2d_scan_graph`` (name and overload are stored apart). A
    file is searched mapped, not read into memory."""
    name = KERNEL_OPERATOR.rsplit('.', 1)[0].encode()
    if isinstance(program, (bytes, bytearray)):
        return name in program
    if isinstance(program, memoryview):
        return name in program.tobytes()
    with open(program, 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(name) >= 0


def load_scan_kernel_if_called(program: Union[bytes, str]) -> bool:
    """Load the kernel (:func:`load_scan_kernel`) when ``program`` calls it; before the
    program is loaded, so that its operators resolve. Returns whether it calls it."""
    if not program_calls_scan_kernel(program):
        return False
    load_scan_kernel()
    return True
