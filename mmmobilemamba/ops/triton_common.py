"""Triton helpers shared by the kernel modules (:mod:`.triton_scan`, :mod:`.triton_fused`,
:mod:`.triton_frozen_bn`): a sum that also runs interpreted, and the sums over a channel's
values (parameters' gradients) without fills or atomics.

``tl.sum`` is a ``@jit`` function of ``triton.language``, made when Triton was first imported:
it cannot run in an interpreter enabled later (a test sets ``TRITON_INTERPRET=1`` and reloads
this module, then the kernel modules). :func:`sum_along` reduces with the builtin ``tl.reduce``
and ``tl.sum``'s own combine function instead: compiled, the same reduction as ``tl.sum``;
interpreted, Triton recognises that function and sums with one NumPy call (any other combine
function is applied element by element in Python, thousands of times slower).
"""
import triton
import triton.language as tl

__all__ = ['sum_along', 'PER_PROGRAM', 'shares', 'column_sums']


@triton.jit
def sum_along(x, axis: tl.constexpr):
    """``tl.sum(x, axis)``, also under an interpreter enabled after Triton's import."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


# ------------------------------------------------------------------ sums over channels
# One program sums its block of channels over the batch when that is at most this many values
# (a single launch, its sums written directly); beyond, several programs share the block and
# write partial sums that :func:`column_sums` adds up (a second launch, the GPU kept busy on
# big maps)
PER_PROGRAM = 16384
_MAX_SHARES = 64
_SUM_ROWS = 32
_SUM_COLUMNS = 128


def shares(values: int) -> int:
    """How many programs share the sums over a block of channels of ``values`` values."""
    return max(1, min(-(-values // PER_PROGRAM), _MAX_SHARES))


@triton.jit
def _store_columns(out_ptr, cols, acc, start, end):
    tl.store(out_ptr + (cols - start), acc, mask=(cols >= start) & (cols < end))


@triton.jit
def _column_sums_kernel(partial_ptr, rows, columns, out0, out1, out2, out3, out4, end0, end1,
                        end2, end3, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Column sums of ``(rows, columns)`` float32 partial sums; columns ``[0, end0)`` into
    ``out0``, ``[end0, end1)`` into ``out1``, ... (each output in its own dtype)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < columns
    acc = tl.full([BLOCK_N], 0.0, tl.float32)
    for start in range(0, rows, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        tile = tl.load(partial_ptr + r.to(tl.int64)[:, None] * columns + cols[None, :],
                       mask=(r < rows)[:, None] & cmask[None, :], other=0.0)
        acc += sum_along(tile, 0)
    _store_columns(out0, cols, acc, 0, end0)
    _store_columns(out1, cols, acc, end0, end1)
    _store_columns(out2, cols, acc, end1, end2)
    _store_columns(out3, cols, acc, end2, end3)
    _store_columns(out4, cols, acc, end3, columns)


def column_sums(partial, outputs) -> None:
    """Write the column sums of ``partial`` (rows, columns), float32, into ``outputs`` (one to
    five 1-D tensors whose lengths add up to ``columns``, in order): one launch."""
    rows, columns = partial.shape
    if not 1 <= len(outputs) <= 5 or sum(o.numel() for o in outputs) != columns:
        raise ValueError(f'column_sums: 1 to 5 outputs of {columns} values in all, got '
                         f'{[o.numel() for o in outputs]}')
    ends, total = [], 0
    for out in outputs[:-1]:
        total += out.numel()
        ends.append(total)
    ends += [columns] * (4 - len(ends))
    outs = list(outputs) + [outputs[-1]] * (5 - len(outputs))  # past `columns`: never written
    _column_sums_kernel[(triton.cdiv(columns, _SUM_COLUMNS),)](
        partial, rows, columns, *outs, *ends, BLOCK_R=_SUM_ROWS, BLOCK_N=_SUM_COLUMNS)
