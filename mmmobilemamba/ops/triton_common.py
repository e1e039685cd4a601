"""Triton helpers shared by the kernel modules (:mod:`.triton_scan`, :mod:`.triton_fused`).

``tl.sum`` is a ``@jit`` function of ``triton.language``, made when Triton was first imported:
it cannot run in an interpreter enabled later (a test sets ``TRITON_INTERPRET=1`` and reloads
this module, then the kernel modules). :func:`sum_along` reduces with the builtin ``tl.reduce``
and ``tl.sum``'s own combine function instead: compiled, the same reduction as ``tl.sum``;
interpreted, Triton recognises that function and sums with one NumPy call (any other combine
function is applied element by element in Python, thousands of times slower).
"""
import triton
import triton.language as tl

__all__ = ['sum_along']


@triton.jit
def sum_along(x, axis: tl.constexpr):
    """``tl.sum(x, axis)``, also under an interpreter enabled after Triton's import."""
    return tl.reduce(x, axis, tl.standard._sum_combine)
