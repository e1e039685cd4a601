"""Shared by the tests of the Triton kernels: Triton's CPU interpreter for the kernel modules,
and a compile-only stand-in for a CUDA GPU.

:func:`triton_interpreter` is :func:`mmmobilemamba.analysis.op_count.triton_interpreter`
(which the launch counts use too: ``TRITON_INTERPRET=1`` set and every
``mmmobilemamba.ops.triton_*`` module re-imported, so their kernels run on CPU tensors) with
the interpreter's scans and reductions vectorised for the tests' speed and its float32 ->
bfloat16 casts rounded to nearest even as on a GPU (it truncates).
"""
from contextlib import ExitStack, contextmanager
from typing import Iterator
from unittest import mock

import numpy as np

from mmmobilemamba.analysis.op_count import triton_interpreter as _package_interpreter


def _sliced(op, inputs):
    """The running results of ``op``'s combine function along its axis, one whole slice per
    step: the arithmetic of the interpreter's element-by-element loop, in the same order, on
    every other index at once."""
    axis = op.axis
    data = [np.moveaxis(arg.handle.data, axis, 0) for arg in inputs]
    acc = [d[0] for d in data]
    steps = [acc]
    for i in range(1, data[0].shape[0]):
        tensors = [op.to_tensor(x, arg.dtype) for x, arg in zip(acc, inputs)]
        tensors += [op.to_tensor(d[i], arg.dtype) for d, arg in zip(data, inputs)]
        out = op.combine_fn.fn(*tensors)
        out = out if isinstance(out, tuple) else (out,)
        acc = [np.asarray(o.handle.data).reshape(d[0].shape) for o, d in zip(out, data)]
        steps.append(acc)
    return steps


def _vector_scan(self, inputs):
    """``ScanOps.generic_scan``, a slice at a time."""
    steps = _sliced(self, inputs)
    return [self.to_tensor(np.moveaxis(np.stack([s[j] for s in steps]), 0, self.axis), arg.dtype)
            for j, arg in enumerate(inputs)]


def _vector_reduce(self, inputs):
    """``ReduceOps.generic_reduce``, a slice at a time."""
    if self.axis is None:  # a reduction of everything: the slow loop (scalar results)
        return _GENERIC_REDUCE(self, inputs)
    acc = _sliced(self, inputs)[-1]
    if self.keep_dims:
        acc = [np.expand_dims(a, self.axis) for a in acc]
    return [self.to_tensor(np.asarray(a), arg.dtype) for a, arg in zip(acc, inputs)]


class _KeptScope:
    """What a nested ``_patch_lang`` returns while a kernel's patches are in place."""

    def restore(self) -> None:
        pass


def _patching_once(patch_lang):
    """``_patch_lang`` that patches ``triton.language`` once per kernel run: the interpreter
    calls it again for every call of a ``@triton.jit`` helper inside the kernel, where the
    language is patched already (a few milliseconds each)."""
    active = []

    def patch(fn):
        if active:
            return _KeptScope()
        scope = patch_lang(fn)
        restore = scope.restore

        def restore_and_leave():
            active.pop()
            restore()

        scope.restore = restore_and_leave
        active.append(scope)
        return scope

    return patch


def _rounding_cast(cast_impl):
    """``InterpreterBuilder.cast_impl`` that rounds float32 to bfloat16 to nearest even, as a
    GPU's ``.to(tl.bfloat16)`` does; the interpreter truncates, whose bias (always towards
    zero) grows through a deep network's bfloat16 stores far beyond a GPU's rounding."""
    import torch
    from triton import language as tl

    def cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data)  # float32 bits, whatever numpy type holds them
            rounded = torch.from_numpy(bits.view(np.float32).copy()).to(torch.bfloat16)
            return _interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16),
                                             dst_type.scalar)
        return cast_impl(self, src, dst_type)

    return cast


try:  # Triton's interpreter reduces and scans with a custom combine one element at a time
    from triton.runtime import interpreter as _interpreter
    _GENERIC_REDUCE = _interpreter.ReduceOps.generic_reduce
    _FASTER = ((_interpreter.ScanOps, 'generic_scan', _vector_scan),
               (_interpreter.ReduceOps, 'generic_reduce', _vector_reduce),
               (_interpreter, '_patch_lang', _patching_once(_interpreter._patch_lang)),
               (_interpreter.InterpreterBuilder, 'cast_impl',
                _rounding_cast(_interpreter.InterpreterBuilder.cast_impl)))
except (ImportError, AttributeError):  # another Triton: its own loops (slower, same results)
    _FASTER = ()


@contextmanager
def triton_interpreter() -> Iterator[None]:
    """Within, the kernel modules run in Triton's interpreter (on CPU tensors), faster and
    computing the same: its scans and reductions with a combine function of our own
    (``tl.reduce``, ``tl.associative_scan``) take a whole slice per step instead of one
    element, and it patches the language once per kernel run, not again for each call of a
    jit helper."""
    with _package_interpreter(), ExitStack() as patches:
        for owner, name, faster in _FASTER:
            patches.enter_context(mock.patch.object(owner, name, faster))
        yield


class _CompileTarget:
    """A stand-in for Triton's CUDA driver that names a GPU and runs nothing."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget('cuda', arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (spills) of a cubin, by Triton's bundled
    ``cuobjdump``; empty where it is missing."""
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    import triton
    tool = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'cuobjdump'
    if not tool.exists() and shutil.which('cuobjdump') is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'kernel.cubin'
        path.write_bytes(cubin)
        out = subprocess.run([str(tool) if tool.exists() else 'cuobjdump',
                              '--dump-resource-usage', str(path)],
                             capture_output=True, text=True).stdout
    return {key.lower(): int(value) for key, value in re.findall(r'(REG|STACK):(\d+)', out)}


@contextmanager
def compiled_for_gpu(modules, arch: int = 90) -> Iterator[list]:
    """Within, launching a kernel of ``modules`` compiles it for a CUDA GPU of compute
    capability ``arch`` (Triton's front end, its MLIR passes, LLVM's NVPTX back end and the
    ``ptxas`` that comes with Triton: no GPU needed) and runs nothing. Yields a list that
    receives ``(kernel name, resource usage)`` per compilation. Triton's driver and the
    kernels' compiled caches are restored afterwards."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
    compiled = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, _resource_usage(kernel.asm['cubin'])))
        return kernel

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(driver, '_active', _CompileTarget(arch)))
        patches.enter_context(mock.patch.object(JITFunction, 'run', compile_only))
        for module in modules:
            for value in list(vars(module).values()):
                if isinstance(value, JITFunction):  # compiled for the stand-in: not kept
                    patches.enter_context(mock.patch.object(
                        value, 'device_caches', type(value.device_caches)(value.create_binder)))
        yield compiled
