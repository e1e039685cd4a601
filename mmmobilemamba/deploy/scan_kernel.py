"""The kernels of SS2D's scan for ExecuTorch and onnxruntime: built from ``csrc/``, cached,
loaded.

Both compute the scan of ``csrc/ss2d_scan_core.h`` (what
:func:`~mmmobilemamba.ops.scan_chunked.ss2d_scan_graph` computes as ~70 graph operators) in one
call per SS2D:

- ExecuTorch (``export_executorch.py --scan-kernel``): the program calls
  ``mmmobilemamba::ss2d_scan_graph.out`` between XNNPACK's calls (``csrc/ss2d_scan.cpp``). It is
  compiled against the installed ``executorch`` package (its headers and ``libexecutorch.so``,
  into which the library registers the kernel when it is loaded), and loaded into the process
  before a program that calls it (:func:`load_scan_kernel`). On a phone the same source is
  compiled into the application with ExecuTorch (docs/deployment.md).
- onnxruntime (``export_onnx.py --scan-kernel``): the graph holds one node
  ``mmmobilemamba.SS2DScan`` per SS2D, run by a custom-op library (``csrc/
  ss2d_scan_onnxruntime.cpp``) that a session registers (``SessionOptions.
  register_custom_ops_library``). It needs no onnxruntime headers: it uses only the C API's
  stable function table.

Each library is built once per source, compiler and machine, under
``~/.cache/mmmobilemamba/kernels`` (``$MMM_CACHE``). The build is for this machine's CPU
(``-march=native``): the cache key holds the CPU's identity, so a home directory shared between
machines gets one library per kind of CPU.
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

__all__ = ['KERNEL_OPERATOR', 'ONNX_DOMAIN', 'ONNX_OPERATOR', 'ONNXRUNTIME_SOURCE', 'SOURCE',
           'ScanKernelError', 'build_scan_kernel', 'kernel_record', 'load_scan_kernel',
           'load_scan_kernel_if_called', 'onnx_calls_scan_kernel', 'program_calls_scan_kernel',
           'register_scan_kernel_if_called']

KERNEL_OPERATOR = 'mmmobilemamba::ss2d_scan_graph.out'
# the onnxruntime custom op: domain and op type of its ONNX nodes
ONNX_DOMAIN = 'mmmobilemamba'
ONNX_OPERATOR = 'SS2DScan'
_CSRC = osp.join(osp.dirname(__file__), 'csrc')
SOURCE = osp.join(_CSRC, 'ss2d_scan.cpp')
ONNXRUNTIME_SOURCE = osp.join(_CSRC, 'ss2d_scan_onnxruntime.cpp')
# the computation both runtimes' kernels include
CORE = osp.join(_CSRC, 'ss2d_scan_core.h')
KERNEL_RUNTIMES = ('executorch', 'onnxruntime')
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


def kernel_record(runtime: str) -> dict:
    """What an export's record says of the kernel its file calls: the operator and the source
    (a path in the repository)."""
    operator = {'executorch': KERNEL_OPERATOR,
                'onnxruntime': f'{ONNX_DOMAIN}.{ONNX_OPERATOR}'}[runtime]
    return dict(operator=operator, source='/'.join(['mmmobilemamba', 'deploy', 'csrc',
                                                    osp.basename(_source(runtime))]))


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


def _source(runtime: str) -> str:
    """The kernel's source for ``runtime`` (read when called: tests point it elsewhere)."""
    return ONNXRUNTIME_SOURCE if runtime == 'onnxruntime' else SOURCE


def _command(compiler: str, runtime: str, output: str) -> List[str]:
    if runtime == 'onnxruntime':
        # no onnxruntime library to link: its C API comes with the call of RegisterCustomOps,
        # the one symbol the library exports
        return [compiler, '-std=c++17', '-shared', '-fPIC', *_OPTIMISATION,
                '-fvisibility=hidden', f'-I{_CSRC}', _source(runtime), '-o', output]
    root = _executorch_root()
    lib = osp.join(root, 'lib')
    includes = [_CSRC, osp.join(root, 'include'),
                osp.join(root, 'include', 'executorch', 'runtime', 'core', 'portable_type',
                         'c10')]
    return [compiler, '-std=c++17', '-shared', '-fPIC', *_OPTIMISATION, *_DEFINES,
            *[f'-I{path}' for path in includes], _source(runtime), '-o', output, f'-L{lib}',
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


def _library_path(compiler: str, runtime: str) -> str:
    command = _command(compiler, runtime, '')
    key = hashlib.sha256()
    for source in (_source(runtime), CORE):
        with open(source, 'rb') as f:
            key.update(f.read())
    parts = [' '.join(command), _compiler_identity(compiler), _cpu_identity(), platform.machine()]
    if runtime == 'executorch':  # linked against the package's libraries
        from importlib.metadata import PackageNotFoundError, version
        try:
            parts.append(version('executorch'))
        except PackageNotFoundError:
            parts.append(_executorch_root())
    for part in parts:
        key.update(part.encode())
    suffix = '' if runtime == 'executorch' else f'_{runtime}'
    return osp.join(_cache_dir(), f'libmmmobilemamba_scan{suffix}-{key.hexdigest()[:16]}.so')


def build_scan_kernel(runtime: str = 'executorch') -> str:
    """Compile the kernel library for ``runtime`` (once: a cached build is reused) and return
    its path.

    Args:
        runtime (str): 'executorch' or 'onnxruntime'.

    Raises:
        ScanKernelError: no compiler, the compiler failed (its output is in the message), or
            (ExecuTorch) no executorch package with headers.
    """
    if runtime not in KERNEL_RUNTIMES:
        raise ValueError(f'no scan kernel for {runtime!r}: choose from {KERNEL_RUNTIMES}')
    compiler = _compiler()
    path = _library_path(compiler, runtime)
    if osp.isfile(path):
        return path
    os.makedirs(osp.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix='.building-', suffix='.so', dir=osp.dirname(path))
    os.close(fd)
    try:
        done = subprocess.run(_command(compiler, runtime, partial), capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise ScanKernelError(
                f'building the scan kernel for {runtime} failed ({compiler}, exit '
                f'{done.returncode}):\n{done.stderr.strip()[-4000:]}\nExport without '
                f'--scan-kernel to run the scan as graph operators instead.')
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
        path = build_scan_kernel('executorch')
        # the runtime's library first, global: the kernel registers into its registry
        from executorch.extension.pybindings import portable_lib  # noqa: F401
        try:
            _LOADED['library'] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise ScanKernelError(f'loading the scan kernel {path} failed ({err}): delete it '
                                  f'to have it rebuilt') from err
        _LOADED['path'] = path
        return path


def _contains(data: Union[bytes, str], name: bytes) -> bool:
    """Whether a file's bytes (or a path's: searched mapped, not read into memory) hold
    ``name``."""
    if isinstance(data, (bytes, bytearray)):
        return name in data
    if isinstance(data, memoryview):
        return name in data.tobytes()
    with open(data, 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return mapped.find(name) >= 0


def program_calls_scan_kernel(program: Union[bytes, str]) -> bool:
    """Whether an ExecuTorch program (its bytes or path) calls the scan kernel: its operator
    table names ``mmmobilemamba::ss2d_scan_graph`` (name and overload are stored apart)."""
    return _contains(program, KERNEL_OPERATOR.rsplit('.', 1)[0].encode())


def onnx_calls_scan_kernel(model: Union[bytes, str]) -> bool:
    """Whether an ONNX model (its bytes or path) has nodes of the scan's custom op (the op
    type ``SS2DScan`` is in the file only as such nodes' type)."""
    return _contains(model, ONNX_OPERATOR.encode())


def load_scan_kernel_if_called(program: Union[bytes, str]) -> bool:
    """Load the kernel (:func:`load_scan_kernel`) when ``program`` calls it; before the
    program is loaded, so that its operators resolve. Returns whether it calls it."""
    if not program_calls_scan_kernel(program):
        return False
    load_scan_kernel()
    return True


def register_scan_kernel_if_called(options, model: Union[bytes, str]) -> bool:
    """Register the onnxruntime custom-op library (building it if needed) in ``options`` (an
    ``onnxruntime.SessionOptions``) when ``model`` (an ONNX file's bytes or path) has nodes of
    the scan's op; before the session is created, so that its nodes resolve. Returns whether it
    has."""
    if not onnx_calls_scan_kernel(model):
        return False
    options.register_custom_ops_library(build_scan_kernel('onnxruntime'))
    return True
