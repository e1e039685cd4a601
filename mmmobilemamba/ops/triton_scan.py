"""The selective scan's recurrence as a Triton kernel: compiled at run time, nothing to build.

``h_t = a_t h_{t-1} + b_t`` over ``(rows, L, inner)`` float32 tensors, in either direction:
one program per ``(row, block of inner channels)`` walks the ``L`` steps once, keeping the
state in registers; a step reads one contiguous block of channels (the token-major layout of
:func:`~mmmobilemamba.ops.selective_scan_channels_last`). The backward pass is the same kernel
run the other way (the adjoint of a linear recurrence is the reversed recurrence), as for the
PyTorch scan.

Imported on first use by ``backend='triton'``: Triton runs on CUDA tensors, or on CPU tensors
in its interpreter when the environment sets ``TRITON_INTERPRET=1`` before this module is
imported (slow: for tests; this package never sets it).
"""
import os

import torch
import triton
import triton.language as tl

from .selective_scan import adjoint_recurrence_function

__all__ = ['TritonRecurrence', 'linear_recurrence_triton', 'can_run']

_BLOCK = 64


@triton.jit
def _recurrence_kernel(a_ptr, b_ptr, h_ptr, length, inner, REVERSE: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    base = row * length * inner
    h = tl.full([BLOCK], 0.0, tl.float32)  # a builtin, unlike tl.zeros (a @jit helper)
    for i in range(0, length):
        if REVERSE:
            t = length - 1 - i
        else:
            t = i
        offsets = base + t * inner + cols
        a = tl.load(a_ptr + offsets, mask=mask, other=1.0)
        b = tl.load(b_ptr + offsets, mask=mask, other=0.0)
        h = a * h + b
        tl.store(h_ptr + offsets, h, mask=mask)


def can_run(tensor: torch.Tensor) -> bool:
    """Whether the kernel can run on ``tensor``'s device here."""
    return tensor.is_cuda or os.environ.get('TRITON_INTERPRET') == '1'


def _recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    if not can_run(a):
        raise RuntimeError("selective scan backend 'triton' needs CUDA tensors (Triton's CPU "
                           'interpreter, TRITON_INTERPRET=1 set before the import, serves '
                           "tests only); on CPU use backend 'torch'")
    a = a.contiguous().float()
    b = b.contiguous().float()
    rows, length, inner = a.shape
    h = torch.empty_like(a)
    grid = (rows, triton.cdiv(inner, _BLOCK))
    _recurrence_kernel[grid](a, b, h, length, inner, REVERSE=reverse, BLOCK=_BLOCK)
    return h


# forwards and backwards (the reversed recurrence) by the kernel
TritonRecurrence = adjoint_recurrence_function(_recurrence)


def linear_recurrence_triton(a: torch.Tensor, b: torch.Tensor,
                             reverse: bool = False) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (``reverse``: ``h_t = a_t h_{t+1} + b_t``) along dim 1 of
    ``(rows, L, inner)`` tensors, zero initial state, float32; differentiable."""
    return TritonRecurrence.apply(a, b, reverse)
