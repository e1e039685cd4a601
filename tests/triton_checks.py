"""Shared by the tests of the Triton kernels: Triton's CPU interpreter for the kernel modules.

:func:`triton_interpreter` is :func:`mmmobilemamba.analysis.op_count.triton_interpreter`
(which the launch counts use too): within it, ``TRITON_INTERPRET=1`` is set and every
``mmmobilemamba.ops.triton_*`` module is re-imported, so their kernels run on CPU tensors.
"""
from mmmobilemamba.analysis.op_count import triton_interpreter

__all__ = ['triton_interpreter']
