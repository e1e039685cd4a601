"""The selective scan's Triton backend: compiled at run time, nothing to build.

Both scans here are first-order linear recurrences ``h_t = a_t h_{t-1} + b_t`` per channel
(and state), computed in tiles of ``BLOCK_T`` steps x a block of channels: a tile is loaded at
once and scanned along time with ``tl.associative_scan`` (the pair ``(a, b)`` composes as
``(a1 a2, a2 b1 + b2)``), the state entering it folded into its first step. Where the
(image x direction x channel block) programs are too few to fill the GPU, the steps are split
into chunks scanned in parallel (:func:`plan_scan`): a first launch writes each chunk's summary
(its end state from a zero start, and its total decay), a second composes the summaries of
the chunks before its own (a scan over at most ``GROUP`` of them at a time) and scans its
chunk from that state.

* :func:`recurrence`: ``h_t = a_t h_{t-1} + b_t`` over ``(rows, L, inner)`` float32 tensors in
  either direction (the token-major scan of
  :func:`~mmmobilemamba.ops.selective_scan_channels_last`).
* :func:`ss2d_scan_forward` / :func:`ss2d_scan_backward`: SS2D's two-direction scan. Programs
  own one direction each (direction 1 runs from the last token to the first) and write its
  output ``y[:, k]``, read-out plus its skip term: no program reads what another stored. The
  decays are ``exp(dt A)`` with ``dt = softplus(delta + bias)``, so a chunk's total decay is
  ``exp(A sum dt)``; it carries the adjoint ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` as well. The
  backward's first launch recomputes each chunk's summaries and the local states at its tile
  starts (for the forward and the adjoint), the second walks each chunk's tiles backwards from
  those, and a third sums the per-program partial gradients (float32 workspace) in a fixed
  order into each gradient in its input's dtype: no atomics, deterministic.

Inputs are read in their own dtype and strides and computed in float32; offsets are 64-bit.
The plain twins are :mod:`.scan_torch`.

This module registers nothing (:mod:`.scan_ops` makes the custom ops), so that a test may
reload it with ``TRITON_INTERPRET=1`` set: Triton then runs the kernels on CPU tensors in its
interpreter (slow: for tests; this package never sets it).
"""
import functools
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_common import sum_along

__all__ = ['recurrence', 'ss2d_scan_forward', 'ss2d_scan_backward', 'can_run', 'plan_scan',
           'ss2d_plan', 'sm_count', 'ScanPlan', 'DEFAULT_SM_COUNT']

DEFAULT_SM_COUNT = 132  # an H100/H200: the plan off CUDA (tests, launch geometry)
_BLOCK_T = 32           # steps per tile, at most
_MIN_BLOCK_T = 8        # and at least (a scan along an axis of one is no tile)
_TILE_PAIRS = 32        # (channel, state) pairs per tile
_MIN_CHUNK = _BLOCK_T   # a chunk of less than a tile gains nothing and adds to the carries
_GROUP = 16             # chunk summaries composed per step of the carry
_REDUCE_BLOCK = 1024


# ------------------------------------------------------------------------- launch plan
@dataclass(frozen=True)
class ScanPlan:
    """How a scan of ``rows`` independent sequences of ``length`` steps is cut into programs.

    Attributes:
        rows (int): independent sequences (batch x directions, or the recurrence's rows).
        channel_blocks (int): blocks of ``block_c`` channels.
        chunk_len (int): steps per chunk (the last may be shorter).
        num_chunks (int): chunks per sequence.
        block_t (int): steps per tile.
        block_c (int): channels per tile.
        tiles_per_chunk (int): tiles of the longest chunk.
    """
    rows: int
    channel_blocks: int
    chunk_len: int
    num_chunks: int
    block_t: int
    block_c: int
    tiles_per_chunk: int

    @property
    def programs(self) -> int:
        """Programs of each scanning launch (one per row, channel block and chunk)."""
        return self.rows * self.channel_blocks * self.num_chunks

    @property
    def grid(self) -> Tuple[int]:
        return (self.programs,)

    @property
    def forward_launches(self) -> int:
        """Kernel launches of a forward: the chunk summaries (when chunked), the scan."""
        return 1 + (self.num_chunks > 1)

    @property
    def backward_launches(self) -> int:
        """Kernel launches of SS2D's backward: the summaries (unless one tile holds the whole
        sequence), the backward scan, the reduction of the partial gradients."""
        return 2 + (self.num_chunks > 1 or self.tiles_per_chunk > 1)


def _chunk_length(programs: int, length: int, target: int) -> int:
    """Steps per chunk so that ``programs`` (unchunked) x chunks reaches ``target``: the whole
    sequence when it already does; else the longest chunk that does, in whole tiles, and at
    least one tile (a program scans a tile in about the time its carry composes ``_GROUP``
    chunk summaries, so shorter chunks would not finish sooner)."""
    if programs >= target:
        return length
    chunk = length // triton.cdiv(target, programs)
    return max(chunk - chunk % _BLOCK_T, _MIN_CHUNK)


def plan_scan(rows: int, channels: int, length: int, n_state: int = 1,
              sm_count: int = DEFAULT_SM_COUNT, chunk_len: Optional[int] = None) -> ScanPlan:
    """The launch plan of a scan: deterministic in its arguments.

    Programs are (row, block of channels, chunk of steps). The sequence is split into chunks
    only when rows x channel blocks fall short of twice the SM count (about two resident
    programs per SM, so that one's memory latency hides behind the other's arithmetic).

    Args:
        rows (int): independent sequences (batch x directions).
        channels (int): channels per sequence.
        length (int): steps ``L``.
        n_state (int): states per channel. Default: 1.
        sm_count (int): the GPU's streaming multiprocessors. Default: 132.
        chunk_len (int, optional): force this many steps per chunk (tests make several
            chunks at small ``L`` with it); None: the policy above.
    """
    if min(rows, channels, length, n_state) < 1:
        raise ValueError(f'scan plan: rows, channels, length and n_state must be positive, '
                         f'got {rows}, {channels}, {length}, {n_state}')
    if chunk_len is not None and chunk_len < 1:
        raise ValueError(f'scan plan: chunk_len must be a positive number of steps or None, '
                         f'got {chunk_len}')
    block_c = max(1, _TILE_PAIRS // triton.next_power_of_2(n_state))
    channel_blocks = triton.cdiv(channels, block_c)
    if chunk_len is None:
        chunk_len = _chunk_length(rows * channel_blocks, length, 2 * sm_count)
    chunk_len = min(chunk_len, length)
    block_t = min(_BLOCK_T, max(_MIN_BLOCK_T, triton.next_power_of_2(chunk_len)))
    return ScanPlan(rows=rows, channel_blocks=channel_blocks, chunk_len=chunk_len,
                    num_chunks=triton.cdiv(length, chunk_len), block_t=block_t,
                    block_c=block_c, tiles_per_chunk=triton.cdiv(chunk_len, block_t))


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The SM count of a CUDA device; :data:`DEFAULT_SM_COUNT` elsewhere."""
    device = torch.device(device)
    if device.type != 'cuda':
        return DEFAULT_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None
                          else torch.cuda.current_device())


def ss2d_plan(batch: int, directions: int, channels: int, length: int, n_state: int = 1,
              sm_count: int = DEFAULT_SM_COUNT, chunk_len: Optional[int] = None) -> ScanPlan:
    """:func:`plan_scan` of SS2D's scan: one row per image and direction."""
    return plan_scan(batch * directions, channels, length, n_state, sm_count, chunk_len)


# ------------------------------------------------------------------------- jit helpers
@triton.jit
def _combine(a1, b1, a2, b2):
    """Two steps of ``h -> a h + b`` in order: first ``(a1, b1)``, then ``(a2, b2)``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _row(x, rows, i):
    """Row ``i`` of a 2-D tile (its rows numbered by ``rows``)."""
    return sum_along(tl.where(rows[:, None] == i, x, 0.0), 0)


@triton.jit
def _scan_tile(a, b, state, rows):
    """The inclusive scan of a tile's steps along axis 0, entering with ``state``: returns
    the cumulative decays and the states."""
    b = tl.where(rows[:, None] == 0, b + a * state[None, :], b)
    return tl.associative_scan((a, b), 0, _combine)


@triton.jit
def _fold(decay, value, state, group_rows, GROUP: tl.constexpr):
    """``state`` carried through the ``GROUP`` steps ``(decay, value)`` in row order (a
    masked step must be ``(1, 0)``)."""
    decays, values = tl.associative_scan((decay, value), 0, _combine)
    return _row(decays, group_rows, GROUP - 1) * state + _row(values, group_rows, GROUP - 1)


@triton.jit
def _log1p(x):
    """``log(1 + x)`` to a few ulps also where ``1 + x`` rounds (libdevice's ``log1p`` does not
    run in Triton's interpreter): ``log(w) x / (w - 1)`` with ``w = 1 + x`` corrects the
    rounding of ``w``."""
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * x / tl.where(w == 1.0, 1.0, w - 1.0))


@triton.jit
def _softplus(z):
    """``F.softplus(z)`` (threshold 20)."""
    return tl.where(z > 20.0, z, _log1p(tl.exp(tl.minimum(z, 20.0))))


@triton.jit
def _sigmoid(z):
    """``softplus'(z)``, in a form that cannot overflow."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _per_state(x, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr):
    """A (steps, channels) tile as (steps, channel x state pairs): each channel's value for
    each of its states."""
    if NP == 1:
        out = x
    else:
        out = tl.reshape(tl.broadcast_to(tl.expand_dims(x, 2), (BLOCK_T, BLOCK_C, NP)),
                         (BLOCK_T, BLOCK_C * NP))
    return out


@triton.jit
def _sum_states(x, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr):
    """A (steps, pairs) tile summed over each channel's states: (steps, channels)."""
    if NP == 1:
        out = x
    else:
        out = sum_along(tl.reshape(x, (BLOCK_T, BLOCK_C, NP)), 2)
    return out


@triton.jit
def _sum_channels(x, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr):
    """A (steps, pairs) tile summed over the channels: (steps, states)."""
    if NP == 1:
        out = tl.expand_dims(sum_along(x, 1), 1)
    else:
        out = sum_along(tl.reshape(x, (BLOCK_T, BLOCK_C, NP)), 1)
    return out


@triton.jit
def _program(num_chunks, channel_blocks, DIRECTIONS: tl.constexpr):
    """This program's chunk, channel block, row (image x direction), image and direction."""
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid % num_chunks
    rest = pid // num_chunks
    block = rest % channel_blocks
    row = rest // channel_blocks
    return chunk, block, row, row // DIRECTIONS, row % DIRECTIONS


@triton.jit
def _columns(block, channels, N: tl.constexpr, NP: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile's channels (``chan``, masked by ``cmask``) and its (channel, state) pairs
    (``pair_c``, ``pair_n``, masked by ``pmask``)."""
    chan = block * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chan < channels
    pairs = tl.arange(0, BLOCK_C * NP)
    pair_c = block * BLOCK_C + pairs // NP
    pair_n = pairs % NP
    return chan, cmask, pair_c, pair_n, (pair_c < channels) & (pair_n < N)


@triton.jit
def _ss2d_params(a_log_ptr, d_ptr, bias_ptr, k, channels, chan, cmask, pair_c, pair_n, pmask,
                 sa_r, sa_n, s_d, s_bias):
    """Direction ``k``'s ``A = -exp(A_log)`` per pair, skip ``D`` and step bias per channel."""
    A = -tl.exp(tl.load(a_log_ptr + (k * channels + pair_c) * sa_r + pair_n * sa_n, mask=pmask,
                        other=0.0).to(tl.float32))
    skip = tl.load(d_ptr + (k * channels + chan) * s_d, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + (k * channels + chan) * s_bias, mask=cmask,
                   other=0.0).to(tl.float32)
    return A, skip, bias


@triton.jit
def _positions(tile_start, end, length, k, rows):
    """A tile's scan positions ``s``, which are inside the chunk, and their tokens ``t``
    (direction 1 scans from the last token to the first)."""
    s = tile_start + rows
    return s < end, s + k * (length - 1 - 2 * s)


@triton.jit
def _step_sizes(delta_ptr, batch, k, t, inside, chan, cmask, bias, sd_b, sd_k, sd_c, sd_t):
    """``z = delta + bias`` and ``dt = softplus(z)`` of (tokens ``t``, channels), ``dt = 0``
    (a step that changes nothing) outside the chunk or the channels."""
    mask = inside[:, None] & cmask[None, :]
    z = tl.load(delta_ptr + batch * sd_b + k * sd_k + t[:, None] * sd_t + chan[None, :] * sd_c,
                mask=mask, other=0.0).to(tl.float32) + bias[None, :]
    return z, tl.where(mask, _softplus(z), 0.0)


@triton.jit
def _channel_tile(ptr, batch, t, inside, chan, cmask, s_b, s_c, s_t):
    """A (tokens, channels) tile of a per-image tensor (``u``), in float32."""
    return tl.load(ptr + batch * s_b + t[:, None] * s_t + chan[None, :] * s_c,
                   mask=inside[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _pair_tile(ptr, batch, k, t, inside, pair_n, pmask, s_b, s_k, s_n, s_t):
    """B or C of (tokens, pairs): each pair's state's projection, in float32."""
    return tl.load(ptr + batch * s_b + k * s_k + t[:, None] * s_t + pair_n[None, :] * s_n,
                   mask=inside[:, None] & pmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _carry_forward(state_ptr, total_ptr, row, chunk, num_chunks, entries, channels, A,
                   pair_c, pair_n, pmask, N: tl.constexpr, GROUP: tl.constexpr):
    """The state entering ``chunk``: the summaries (end state from zero, ``sum dt``) of the
    chunks before it, composed in order."""
    group_rows = tl.arange(0, GROUP)
    h = tl.where(pmask, 0.0, 0.0)
    for first in range(0, chunk, GROUP):
        j = first + group_rows
        ok = (j < chunk)[:, None] & pmask[None, :]
        entry = ((row * num_chunks + j) * entries + entries - 1)[:, None] * channels + pair_c
        total = tl.load(total_ptr + entry, mask=ok, other=0.0)
        end = tl.load(state_ptr + entry * N + pair_n, mask=ok, other=0.0)
        h = _fold(tl.exp(total * A[None, :]), end, h, group_rows, GROUP)
    return h


@triton.jit
def _carry_adjoint(adjoint_ptr, total_ptr, row, chunk, num_chunks, entries, channels, A,
                   pair_c, pair_n, pmask, N: tl.constexpr, GROUP: tl.constexpr):
    """``a_{e+1} g_{e+1}`` at the last step ``e`` of ``chunk``: the adjoint summaries of the
    chunks after it, composed from the last chunk backwards (same decays as the forward)."""
    group_rows = tl.arange(0, GROUP)
    q = tl.where(pmask, 0.0, 0.0)
    for first in range(0, num_chunks - 1 - chunk, GROUP):
        j = num_chunks - 1 - first - group_rows
        ok = (j > chunk)[:, None] & pmask[None, :]
        at = (row * num_chunks + j)[:, None] * channels + pair_c
        total = tl.load(total_ptr + ((row * num_chunks + j) * entries + entries - 1)[:, None]
                        * channels + pair_c, mask=ok, other=0.0)
        local = tl.load(adjoint_ptr + at * N + pair_n, mask=ok, other=0.0)
        q = _fold(tl.exp(total * A[None, :]), local, q, group_rows, GROUP)
    return q


# ------------------------------------------------------------------------- SS2D kernels
@triton.jit
def _ss2d_chunk_kernel(u_ptr, delta_ptr, a_log_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, dy_ptr,
                       state_ptr, total_ptr, adjoint_ptr,
                       length, channels, chunk_len, num_chunks, channel_blocks, entries,
                       su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                       sc_b, sc_k, sc_n, sc_t, sa_r, sa_n, s_d, s_bias,
                       sg_b, sg_k, sg_t, sg_c,
                       DIRECTIONS: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, ADJOINT: tl.constexpr):
    """Each chunk scanned from a zero state: its end state and ``sum dt`` (the last of its
    ``entries``); with ``ADJOINT`` also the local state and ``sum dt`` at each tile start
    (entries ``0..``) and the adjoint's outgoing ``a_f g_f`` from a zero carry."""
    chunk, block, row, batch, k = _program(num_chunks, channel_blocks, DIRECTIONS)
    chan, cmask, pair_c, pair_n, pmask = _columns(block, channels, N, NP, BLOCK_C)
    A, skip, bias = _ss2d_params(a_log_ptr, d_ptr, bias_ptr, k, channels, chan, cmask, pair_c,
                                 pair_n, pmask, sa_r, sa_n, s_d, s_bias)
    rows = tl.arange(0, BLOCK_T)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    entry0 = (row * num_chunks + chunk) * entries
    h = tl.where(pmask, 0.0, 0.0)
    total = tl.where(cmask, 0.0, 0.0)
    decay = tl.where(pmask, 1.0, 1.0)  # from the chunk's start to the tile's
    q = tl.where(pmask, 0.0, 0.0)
    for tile_start in range(start, end, BLOCK_T):
        if ADJOINT:
            entry = entry0 + (tile_start - start) // BLOCK_T
            tl.store(state_ptr + (entry * channels + pair_c) * N + pair_n, h, mask=pmask)
            tl.store(total_ptr + entry * channels + chan, total, mask=cmask)
        inside, t = _positions(tile_start, end, length, k, rows)
        z, dt = _step_sizes(delta_ptr, batch, k, t, inside, chan, cmask, bias,
                            sd_b, sd_k, sd_c, sd_t)
        u = _channel_tile(u_ptr, batch, t, inside, chan, cmask, su_b, su_c, su_t)
        a = tl.exp(_per_state(dt, BLOCK_T, BLOCK_C, NP) * A[None, :])
        bx = _per_state(dt * u, BLOCK_T, BLOCK_C, NP) * _pair_tile(
            b_ptr, batch, k, t, inside, pair_n, pmask, sb_b, sb_k, sb_n, sb_t)
        decays, states = _scan_tile(a, bx, h, rows)
        if ADJOINT:
            # the adjoint from a zero carry: sum over steps of (decay since the chunk's
            # start, inclusive) x dy C
            dy = _channel_tile(dy_ptr + k * sg_k, batch, t, inside, chan, cmask,
                               sg_b, sg_c, sg_t)
            dyc = _per_state(dy, BLOCK_T, BLOCK_C, NP) * _pair_tile(
                c_ptr, batch, k, t, inside, pair_n, pmask, sc_b, sc_k, sc_n, sc_t)
            q += sum_along(decay[None, :] * decays * dyc, 0)
            decay = decay * _row(decays, rows, BLOCK_T - 1)
        h = _row(states, rows, BLOCK_T - 1)
        total += sum_along(dt, 0)
    entry = entry0 + entries - 1
    tl.store(state_ptr + (entry * channels + pair_c) * N + pair_n, h, mask=pmask)
    tl.store(total_ptr + entry * channels + chan, total, mask=cmask)
    if ADJOINT:
        tl.store(adjoint_ptr + ((row * num_chunks + chunk) * channels + pair_c) * N + pair_n, q,
                 mask=pmask)


@triton.jit
def _ss2d_forward_kernel(u_ptr, delta_ptr, a_log_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr,
                         state_ptr, total_ptr,
                         length, channels, chunk_len, num_chunks, channel_blocks,
                         su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                         sc_b, sc_k, sc_n, sc_t, sa_r, sa_n, s_d, s_bias,
                         DIRECTIONS: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """One direction's chunk from the state entering it: ``y[b, k, t] = C_t h_t + D u_t``."""
    chunk, block, row, batch, k = _program(num_chunks, channel_blocks, DIRECTIONS)
    chan, cmask, pair_c, pair_n, pmask = _columns(block, channels, N, NP, BLOCK_C)
    A, skip, bias = _ss2d_params(a_log_ptr, d_ptr, bias_ptr, k, channels, chan, cmask, pair_c,
                                 pair_n, pmask, sa_r, sa_n, s_d, s_bias)
    h = _carry_forward(state_ptr, total_ptr, row, chunk, num_chunks, 1, channels, A, pair_c,
                       pair_n, pmask, N, GROUP)
    rows = tl.arange(0, BLOCK_T)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    for tile_start in range(start, end, BLOCK_T):
        inside, t = _positions(tile_start, end, length, k, rows)
        z, dt = _step_sizes(delta_ptr, batch, k, t, inside, chan, cmask, bias,
                            sd_b, sd_k, sd_c, sd_t)
        u = _channel_tile(u_ptr, batch, t, inside, chan, cmask, su_b, su_c, su_t)
        a = tl.exp(_per_state(dt, BLOCK_T, BLOCK_C, NP) * A[None, :])
        bx = _per_state(dt * u, BLOCK_T, BLOCK_C, NP) * _pair_tile(
            b_ptr, batch, k, t, inside, pair_n, pmask, sb_b, sb_k, sb_n, sb_t)
        _, states = _scan_tile(a, bx, h, rows)
        c_t = _pair_tile(c_ptr, batch, k, t, inside, pair_n, pmask, sc_b, sc_k, sc_n, sc_t)
        y = _sum_states(states * c_t, BLOCK_T, BLOCK_C, NP) + u * skip[None, :]
        tl.store(y_ptr + (row * length + t[:, None]) * channels + chan[None, :], y,
                 mask=inside[:, None] & cmask[None, :])
        h = _row(states, rows, BLOCK_T - 1)


@triton.jit
def _ss2d_backward_kernel(dy_ptr, u_ptr, delta_ptr, a_log_ptr, b_ptr, c_ptr, d_ptr, bias_ptr,
                          state_ptr, total_ptr, adjoint_ptr,
                          ddelta_ptr, du_part_ptr, db_part_ptr, dc_part_ptr, da_part_ptr,
                          dd_part_ptr, dbias_part_ptr,
                          length, channels, chunk_len, num_chunks, channel_blocks, entries,
                          rows_total,
                          su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                          sc_b, sc_k, sc_n, sc_t, sa_r, sa_n, s_d, s_bias,
                          sg_b, sg_k, sg_t, sg_c,
                          DIRECTIONS: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr,
                          TILE_STATES: tl.constexpr):
    """One direction's chunk, its tiles from the last to the first: the states from the tile
    starts' summaries, the adjoint ``g`` by a reversed scan, every gradient of the chunk;
    ``ddelta`` stored, ``du`` per direction and the B/C/parameter gradients as partial sums
    (float32) for the reduction kernel."""
    chunk, block, row, batch, k = _program(num_chunks, channel_blocks, DIRECTIONS)
    chan, cmask, pair_c, pair_n, pmask = _columns(block, channels, N, NP, BLOCK_C)
    A, skip, bias = _ss2d_params(a_log_ptr, d_ptr, bias_ptr, k, channels, chan, cmask, pair_c,
                                 pair_n, pmask, sa_r, sa_n, s_d, s_bias)
    h_in = _carry_forward(state_ptr, total_ptr, row, chunk, num_chunks, entries, channels, A,
                          pair_c, pair_n, pmask, N, GROUP)
    q = _carry_adjoint(adjoint_ptr, total_ptr, row, chunk, num_chunks, entries, channels, A,
                       pair_c, pair_n, pmask, N, GROUP)
    rows = tl.arange(0, BLOCK_T)
    states_n = tl.arange(0, NP)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    tiles = (end - start + BLOCK_T - 1) // BLOCK_T
    grad_a = tl.where(pmask, 0.0, 0.0)
    grad_skip = tl.where(cmask, 0.0, 0.0)
    grad_bias = tl.where(cmask, 0.0, 0.0)
    for i in range(0, tiles):
        tile = tiles - 1 - i
        tile_start = start + tile * BLOCK_T
        if TILE_STATES:
            entry = (row * num_chunks + chunk) * entries + tile
            local = tl.load(state_ptr + (entry * channels + pair_c) * N + pair_n, mask=pmask,
                            other=0.0)
            before = tl.load(total_ptr + entry * channels + pair_c, mask=pmask, other=0.0)
            h0 = local + tl.exp(before * A) * h_in
        else:  # one tile holds the whole sequence
            h0 = h_in
        inside, t = _positions(tile_start, end, length, k, rows)
        z, dt = _step_sizes(delta_ptr, batch, k, t, inside, chan, cmask, bias,
                            sd_b, sd_k, sd_c, sd_t)
        u = _channel_tile(u_ptr, batch, t, inside, chan, cmask, su_b, su_c, su_t)
        dy = _channel_tile(dy_ptr + k * sg_k, batch, t, inside, chan, cmask, sg_b, sg_c, sg_t)
        b_t = _pair_tile(b_ptr, batch, k, t, inside, pair_n, pmask, sb_b, sb_k, sb_n, sb_t)
        c_t = _pair_tile(c_ptr, batch, k, t, inside, pair_n, pmask, sc_b, sc_k, sc_n, sc_t)
        dt_pairs = _per_state(dt, BLOCK_T, BLOCK_C, NP)
        a = tl.exp(dt_pairs * A[None, :])
        x = dt * u
        x_pairs = _per_state(x, BLOCK_T, BLOCK_C, NP)
        bx = x_pairs * b_t
        _, h = _scan_tile(a, bx, h0, rows)
        # the adjoint g_s = dy_s C_s + a_{s+1} g_{s+1}, from the tile's last step backwards:
        # the next step's decay, and the carry a_{e+1} g_{e+1} at the chunk's last step e
        inside_next, t_next = _positions(tile_start + 1, end, length, k, rows)
        _, dt_next = _step_sizes(delta_ptr, batch, k, t_next, inside_next, chan, cmask, bias,
                                 sd_b, sd_k, sd_c, sd_t)
        a_next = tl.exp(_per_state(dt_next, BLOCK_T, BLOCK_C, NP) * A[None, :])
        last = tl.minimum(end - tile_start, BLOCK_T) - 1
        dyc = _per_state(dy, BLOCK_T, BLOCK_C, NP) * c_t
        _, g = tl.associative_scan(
            (a_next, tl.where(rows[:, None] == last, dyc + q[None, :], dyc)), 0, _combine,
            reverse=True)
        q = _row(a * g, rows, 0)
        # a_s h_{s-1} = h_s - dt_s u_s B_s (no division by a decay)
        grad_decay = g * (h - bx)
        dx = _sum_states(g * b_t, BLOCK_T, BLOCK_C, NP)
        dz = (dx * u + _sum_states(grad_decay * A[None, :], BLOCK_T, BLOCK_C, NP)) * _sigmoid(z)
        mask = inside[:, None] & cmask[None, :]
        dz = tl.where(mask, dz, 0.0)
        tok = (row * length + t[:, None]) * channels + chan[None, :]
        tl.store(ddelta_ptr + tok, dz.to(ddelta_ptr.dtype.element_ty), mask=mask)
        tl.store(du_part_ptr + tok, dx * dt + dy * skip[None, :], mask=mask)
        # B and C are shared by the channels: this block's part of their gradients
        bc = ((block * rows_total + row) * length + t[:, None]) * N + states_n[None, :]
        bc_mask = inside[:, None] & (states_n < N)[None, :]
        tl.store(db_part_ptr + bc, _sum_channels(g * x_pairs, BLOCK_T, BLOCK_C, NP),
                 mask=bc_mask)
        tl.store(dc_part_ptr + bc, _sum_channels(_per_state(dy, BLOCK_T, BLOCK_C, NP) * h,
                                                 BLOCK_T, BLOCK_C, NP), mask=bc_mask)
        grad_a += sum_along(grad_decay * dt_pairs, 0)
        grad_skip += sum_along(dy * u, 0)
        grad_bias += sum_along(dz, 0)
    # one partial per (image, chunk) of each parameter's gradient; dL/dA_log = dL/dA * A
    part = (batch * num_chunks + chunk) * DIRECTIONS * channels + k * channels
    tl.store(da_part_ptr + (part + pair_c) * N + pair_n, grad_a * A, mask=pmask)
    tl.store(dd_part_ptr + part + chan, grad_skip, mask=cmask)
    tl.store(dbias_part_ptr + part + chan, grad_bias, mask=cmask)


@triton.jit
def _sum_parts(src_ptr, dst_ptr, block, groups_numel, group, parts, part_stride, group_stride,
               BLOCK: tl.constexpr):
    """One block of ``dst[i, j] = sum_p src[p * part_stride + i * group_stride + j]`` (``j``
    below ``group``, the partials in order), stored in ``dst``'s dtype."""
    blocks = (group + BLOCK - 1) // BLOCK
    i = block // blocks
    j = (block % blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = (j < group) & (i * group < groups_numel)
    src = src_ptr + i * group_stride + j
    acc = tl.where(mask, 0.0, 0.0)
    for p in range(0, parts):
        acc += tl.load(src + p * part_stride, mask=mask, other=0.0)
    tl.store(dst_ptr + i * group + j, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ss2d_reduce_kernel(du_part_ptr, db_part_ptr, dc_part_ptr, da_part_ptr, dd_part_ptr,
                        dbias_part_ptr, du_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dbias_ptr,
                        du_numel, plane, bc_numel, a_numel, d_numel,
                        directions, channel_blocks, param_parts,
                        du_end, db_end, dc_end, da_end, dd_end, BLOCK: tl.constexpr):
    """Each gradient from its partials, in a fixed order: ``du`` over the directions,
    ``dB``/``dC`` over the channel blocks, the parameters' over images x chunks. Ranges of
    programs pick the gradient."""
    pid = tl.program_id(0).to(tl.int64)
    if pid < du_end:  # du[b] = sum_k du_k[b]: partials (batch, K, L*d)
        _sum_parts(du_part_ptr, du_ptr, pid, du_numel, plane, directions, plane,
                   directions * plane, BLOCK)
    elif pid < db_end:
        _sum_parts(db_part_ptr, db_ptr, pid - du_end, bc_numel, bc_numel, channel_blocks,
                   bc_numel, 0, BLOCK)
    elif pid < dc_end:
        _sum_parts(dc_part_ptr, dc_ptr, pid - db_end, bc_numel, bc_numel, channel_blocks,
                   bc_numel, 0, BLOCK)
    elif pid < da_end:
        _sum_parts(da_part_ptr, da_ptr, pid - dc_end, a_numel, a_numel, param_parts, a_numel, 0,
                   BLOCK)
    elif pid < dd_end:
        _sum_parts(dd_part_ptr, dd_ptr, pid - da_end, d_numel, d_numel, param_parts, d_numel, 0,
                   BLOCK)
    else:
        _sum_parts(dbias_part_ptr, dbias_ptr, pid - dd_end, d_numel, d_numel, param_parts,
                   d_numel, 0, BLOCK)


# ------------------------------------------------------------------------- recurrence kernels
@triton.jit
def _recurrence_tile(a_ptr, b_ptr, row, tile_start, end, length, cols, cmask, inner, rows,
                     REVERSE: tl.constexpr):
    """A tile's offsets, mask and steps ``(a, b)``; outside the chunk ``(1, 0)``."""
    s = tile_start + rows
    if REVERSE:
        t = length - 1 - s
    else:
        t = s
    mask = (s < end)[:, None] & cmask[None, :]
    at = (row * length + t[:, None]) * inner + cols[None, :]
    return (at, mask, tl.load(a_ptr + at, mask=mask, other=1.0),
            tl.load(b_ptr + at, mask=mask, other=0.0))


@triton.jit
def _recurrence_chunk_kernel(a_ptr, b_ptr, decay_ptr, state_ptr, length, inner, chunk_len,
                             num_chunks, channel_blocks, REVERSE: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each chunk's summary: its end state from a zero start and the product of its decays."""
    chunk, block, row, _image, _direction = _program(num_chunks, channel_blocks, 1)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < inner
    rows = tl.arange(0, BLOCK_T)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    h = tl.where(cmask, 0.0, 0.0)
    decay = tl.where(cmask, 1.0, 1.0)
    for tile_start in range(start, end, BLOCK_T):
        _at, _mask, a, b = _recurrence_tile(a_ptr, b_ptr, row, tile_start, end, length, cols,
                                            cmask, inner, rows, REVERSE)
        decays, states = _scan_tile(a, b, h, rows)
        decay = decay * _row(decays, rows, BLOCK_T - 1)
        h = _row(states, rows, BLOCK_T - 1)
    at = (row * num_chunks + chunk) * inner + cols
    tl.store(decay_ptr + at, decay, mask=cmask)
    tl.store(state_ptr + at, h, mask=cmask)


@triton.jit
def _recurrence_kernel(a_ptr, b_ptr, h_ptr, decay_ptr, state_ptr, length, inner, chunk_len,
                       num_chunks, channel_blocks, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """A chunk scanned from the state the chunks before it (in the scan's direction) leave."""
    chunk, block, row, _image, _direction = _program(num_chunks, channel_blocks, 1)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < inner
    rows = tl.arange(0, BLOCK_T)
    group_rows = tl.arange(0, GROUP)
    h = tl.where(cmask, 0.0, 0.0)
    for first in range(0, chunk, GROUP):
        j = first + group_rows
        ok = (j < chunk)[:, None] & cmask[None, :]
        at = (row * num_chunks + j)[:, None] * inner + cols[None, :]
        h = _fold(tl.load(decay_ptr + at, mask=ok, other=1.0),
                  tl.load(state_ptr + at, mask=ok, other=0.0), h, group_rows, GROUP)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    for tile_start in range(start, end, BLOCK_T):
        at, mask, a, b = _recurrence_tile(a_ptr, b_ptr, row, tile_start, end, length, cols,
                                          cmask, inner, rows, REVERSE)
        _, states = _scan_tile(a, b, h, rows)
        tl.store(h_ptr + at, states, mask=mask)
        h = _row(states, rows, BLOCK_T - 1)


# ------------------------------------------------------------------------- host side
def can_run(tensor: torch.Tensor) -> bool:
    """Whether the kernels can run on ``tensor``'s device here."""
    return tensor.is_cuda or os.environ.get('TRITON_INTERPRET') == '1'


def _check_device(tensor: torch.Tensor) -> None:
    if not can_run(tensor):
        raise RuntimeError("selective scan backend 'triton' needs CUDA tensors (Triton's CPU "
                           'interpreter, TRITON_INTERPRET=1 set before the import, serves '
                           "tests only); on CPU use backend 'torch'")


def recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool, *,
               chunk_len: Optional[int] = None) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (``reverse``: ``h_t = a_t h_{t+1} + b_t``) along dim 1 of
    ``(rows, L, inner)`` tensors, zero initial state, float32; no autograd. ``chunk_len``
    forces the chunking (tests)."""
    _check_device(a)
    a = a.contiguous().float()
    b = b.contiguous().float()
    rows, length, inner = a.shape
    h = torch.empty_like(a)
    if h.numel() == 0:
        return h
    plan = plan_scan(rows, inner, length, 1, sm_count(a.device), chunk_len)
    sizes = (length, inner, plan.chunk_len, plan.num_chunks, plan.channel_blocks)
    meta = dict(REVERSE=reverse, BLOCK_T=plan.block_t, BLOCK_C=plan.block_c)
    decay = state = h  # not read when there is one chunk
    if plan.num_chunks > 1:
        decay, state = torch.empty(2, rows * plan.num_chunks * inner, device=a.device,
                                   dtype=torch.float32)
        _recurrence_chunk_kernel[plan.grid](a, b, decay, state, *sizes, **meta)
    _recurrence_kernel[plan.grid](a, b, h, decay, state, *sizes, GROUP=_GROUP, **meta)
    return h


def _token_major_empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty tensor of ``shape`` whose two last dims are transposed in memory (the layout
    of the per-token gradients: step ``t`` is a contiguous block)."""
    *lead, rows, cols = shape
    return torch.empty(*lead, cols, rows, dtype=dtype, device=device).transpose(-1, -2)


def _ss2d_launch(u, delta, A_log, B, C, D, delta_bias, chunk_len):
    """The plan, the sizes and strides every SS2D kernel takes, and the compile-time
    constants."""
    _check_device(u)
    batch, channels, length = u.shape
    directions, n_state = delta.shape[1], A_log.shape[1]
    plan = ss2d_plan(batch, directions, channels, length, n_state, sm_count(u.device), chunk_len)
    sizes = (length, channels, plan.chunk_len, plan.num_chunks, plan.channel_blocks)
    strides = (*u.stride(), *delta.stride(), *B.stride(), *C.stride(), *A_log.stride(),
               D.stride(0), delta_bias.stride(0))
    meta = dict(DIRECTIONS=directions, N=n_state, NP=triton.next_power_of_2(n_state),
                BLOCK_T=plan.block_t, BLOCK_C=plan.block_c)
    return plan, sizes, strides, meta


def ss2d_scan_forward(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor, *,
                      chunk_len: Optional[int] = None) -> torch.Tensor:
    """SS2D's scan (see :func:`mmmobilemamba.ops.ss2d_scan`): ``y`` (batch, K, L, d) float32,
    each direction's read-out plus its skip term. One launch, two when chunked
    (``chunk_len`` forces the chunking: tests)."""
    batch, channels, length = u.shape
    directions, n_state = delta.shape[1], A_log.shape[1]
    plan, sizes, strides, meta = _ss2d_launch(u, delta, A_log, B, C, D, delta_bias, chunk_len)
    y = torch.empty(batch, directions, length, channels, device=u.device, dtype=torch.float32)
    state = total = y  # not read when there is one chunk
    if plan.num_chunks > 1:
        summaries = torch.empty(plan.rows * plan.num_chunks * channels * (n_state + 1),
                                device=u.device, dtype=torch.float32)
        state, total = summaries.split([summaries.numel() // (n_state + 1) * n_state,
                                        summaries.numel() // (n_state + 1)])
        _ss2d_chunk_kernel[plan.grid](u, delta, A_log, B, C, D, delta_bias, y, state, total,
                                      state, *sizes, 1, *strides, 0, 0, 0, 0, ADJOINT=False,
                                      **meta)
    _ss2d_forward_kernel[plan.grid](u, delta, A_log, B, C, D, delta_bias, y, state, total,
                                    *sizes, *strides, GROUP=_GROUP, **meta)
    return y


def ss2d_scan_backward(grad_y: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                       A_log: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                       delta_bias: torch.Tensor, *,
                       chunk_len: Optional[int] = None) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`ss2d_scan_forward` given ``grad_y`` (batch, K, L, d), read by
    its strides (stride 0 along K too): ``(du, ddelta, dA_log, dB, dC, dD, ddelta_bias)``
    shaped as the inputs and in their dtypes, per-token ones token-major in memory.

    Three launches (two when one tile holds the sequence): the chunk and tile-start
    summaries, the backward scan writing ``ddelta`` and float32 partials of the others, the
    reduction of the partials. Only ``torch.empty`` besides.
    """
    batch, channels, length = u.shape
    directions, n_state = delta.shape[1], A_log.shape[1]
    if tuple(grad_y.shape) != (batch, directions, length, channels):
        raise ValueError(f'ss2d_scan_backward: grad_y must be (batch, K, L, d) = '
                         f'{(batch, directions, length, channels)}, the shape of the scan\'s '
                         f'output; got {tuple(grad_y.shape)}')
    plan, sizes, strides, meta = _ss2d_launch(u, delta, A_log, B, C, D, delta_bias, chunk_len)
    rows, chunks, device = plan.rows, plan.num_chunks, u.device
    tile_states = chunks > 1 or plan.tiles_per_chunk > 1
    entries = plan.tiles_per_chunk + 1
    pieces = dict(
        state=rows * chunks * entries * channels * n_state if tile_states else 0,
        total=rows * chunks * entries * channels if tile_states else 0,
        adjoint=rows * chunks * channels * n_state if tile_states else 0,
        du=rows * length * channels,
        db=plan.channel_blocks * rows * length * n_state,
        dc=plan.channel_blocks * rows * length * n_state,
        da=batch * chunks * directions * channels * n_state,
        dd=batch * chunks * directions * channels,
        dbias=batch * chunks * directions * channels)
    work = dict(zip(pieces, torch.empty(sum(pieces.values()), device=device,
                                        dtype=torch.float32).split(list(pieces.values()))))
    du = _token_major_empty(u.shape, u.dtype, device)
    ddelta = _token_major_empty(delta.shape, delta.dtype, device)
    dA = torch.empty(A_log.shape, device=device, dtype=A_log.dtype)
    dB = _token_major_empty(B.shape, B.dtype, device)
    dC = _token_major_empty(C.shape, C.dtype, device)
    dD = torch.empty(D.shape, device=device, dtype=D.dtype)
    dbias = torch.empty(delta_bias.shape, device=device, dtype=delta_bias.dtype)
    inputs = (u, delta, A_log, B, C, D, delta_bias)
    # without summaries (one tile holds the sequence) a float32 buffer stands in, never read
    summaries = (work['state'], work['total'], work['adjoint']) if tile_states else \
        (work['du'],) * 3
    if tile_states:
        _ss2d_chunk_kernel[plan.grid](*inputs, grad_y, *summaries, *sizes, entries, *strides,
                                      *grad_y.stride(), ADJOINT=True, **meta)
    parts = (work['du'], work['db'], work['dc'], work['da'], work['dd'], work['dbias'])
    _ss2d_backward_kernel[plan.grid](grad_y, *inputs, *summaries, ddelta, *parts, *sizes,
                                     entries, rows, *strides, *grad_y.stride(), GROUP=_GROUP,
                                     TILE_STATES=tile_states, **meta)
    numels = (batch * length * channels, rows * length * n_state, rows * length * n_state,
              directions * channels * n_state, directions * channels,
              directions * channels)
    # du: a row of blocks per image; the others: one row
    blocks = (batch * triton.cdiv(length * channels, _REDUCE_BLOCK),
              *(triton.cdiv(numel, _REDUCE_BLOCK) for numel in numels[1:]))
    ends = [0]
    for count in blocks:
        ends.append(ends[-1] + count)
    _ss2d_reduce_kernel[(ends[-1],)](*parts, du, dB, dC, dA, dD, dbias, numels[0],
                                     length * channels, numels[1], numels[3], numels[4],
                                     directions, plan.channel_blocks, batch * chunks,
                                     *ends[1:6], BLOCK=_REDUCE_BLOCK)
    return du, ddelta, dA, dB, dC, dD, dbias
