"""Shared by the tests of the Triton kernels: Triton's CPU interpreter for the kernel modules."""
import importlib
import os
from contextlib import ExitStack, contextmanager
from typing import Iterator
from unittest import mock

import numpy as np

# helpers first: the kernel modules import their jit functions when reloaded
KERNEL_MODULES = ('mmmobilemamba.ops.triton_common', 'mmmobilemamba.ops.triton_scan',
                  'mmmobilemamba.ops.triton_fused')


def _sliced(op, inputs, combine):
    """``combine`` applied along ``op.axis`` one whole slice at a time: the arithmetic of the
    interpreter's element-by-element loop, in the same order, on every other index at once."""
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
    steps = _sliced(self, inputs, self.combine_fn)
    return [self.to_tensor(np.moveaxis(np.stack([s[j] for s in steps]), 0, self.axis), arg.dtype)
            for j, arg in enumerate(inputs)]


def _is_plain_sum(combine_fn) -> bool:
    """``triton_common.sum_along``'s combine function (``a + b``)."""
    fn = getattr(combine_fn, 'fn', None)
    return getattr(fn, '__module__', '') == 'mmmobilemamba.ops.triton_common' and \
        getattr(fn, '__name__', '') == '_add'


def _vector_reduce(self, inputs):
    if self.axis is None:  # a reduction of everything: the slow loop (scalar results)
        return _GENERIC_REDUCE(self, inputs)
    if len(inputs) == 1 and _is_plain_sum(self.combine_fn):  # as tl.sum's own fast path
        return [self.to_tensor(np.sum(inputs[0].handle.data, axis=self.axis,
                                      keepdims=self.keep_dims), inputs[0].dtype)]
    acc = _sliced(self, inputs, self.combine_fn)[-1]
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


try:  # Triton's interpreter reduces and scans with a custom combine one element at a time
    from triton.runtime import interpreter as _interpreter
    _GENERIC_REDUCE = _interpreter.ReduceOps.generic_reduce
    _FASTER = ((_interpreter.ScanOps, 'generic_scan', _vector_scan),
               (_interpreter.ReduceOps, 'generic_reduce', _vector_reduce),
               (_interpreter, '_patch_lang', _patching_once(_interpreter._patch_lang)))
except (ImportError, AttributeError):  # another Triton: its own loops (slower, same results)
    _FASTER = ()


@contextmanager
def triton_interpreter() -> Iterator[None]:
    """Within, the kernel modules run in Triton's interpreter (on CPU tensors).

    Sets ``TRITON_INTERPRET=1`` (the package never does) and re-imports the kernel modules so
    that their kernels are built for the interpreter; afterwards both are restored. Within,
    the interpreter runs faster, computing the same: its scans and reductions with a combine
    function of our own (``tl.reduce``, ``tl.associative_scan``) take a whole slice per step
    instead of one element (``sum_along`` is a numpy sum, as ``tl.sum`` is there), and it
    patches the language once per kernel run, not again for each call of a jit helper.
    """
    before = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    modules = [importlib.reload(importlib.import_module(name)) for name in KERNEL_MODULES]
    with ExitStack() as patches:
        for owner, name, faster in _FASTER:
            patches.enter_context(mock.patch.object(owner, name, faster))
        try:
            yield
        finally:
            if before is None:
                del os.environ['TRITON_INTERPRET']
            else:
                os.environ['TRITON_INTERPRET'] = before
            for module in modules:
                importlib.reload(module)
