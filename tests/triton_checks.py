"""Shared by the tests of the Triton kernels: Triton's CPU interpreter for the kernel modules."""
import importlib
import os
from contextlib import contextmanager
from typing import Iterator

# helpers first: the kernel modules import their jit functions when reloaded
KERNEL_MODULES = ('mmmobilemamba.ops.triton_common', 'mmmobilemamba.ops.triton_scan',
                  'mmmobilemamba.ops.triton_fused')


@contextmanager
def triton_interpreter() -> Iterator[None]:
    """Within, the kernel modules run in Triton's interpreter (on CPU tensors).

    Sets ``TRITON_INTERPRET=1`` (the package never does) and re-imports the kernel modules so
    that their kernels are built for the interpreter; afterwards both are restored.
    """
    before = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    modules = [importlib.reload(importlib.import_module(name)) for name in KERNEL_MODULES]
    try:
        yield
    finally:
        if before is None:
            del os.environ['TRITON_INTERPRET']
        else:
            os.environ['TRITON_INTERPRET'] = before
        for module in modules:
            importlib.reload(module)
