"""The selective scan as a few large ops: the form exported graphs run (ONNX, ExecuTorch).

A graph runtime (onnxruntime, ExecuTorch's XNNPACK delegate) pays for every node, so the scan
of :mod:`.scan_torch` (``2 sqrt(L)`` sequential steps of small elementwise ops) costs there
what its arithmetic does not. Here the recurrence ``h_t = exp(g_t) h_{t-1} + x_t`` (``g_t <=
0`` the log decay) is a fixed sequence of whole-tensor ops: batched matrix products with
constant matrices, ``exp``, elementwise products and sums, and nothing else (no cumsum, flip,
where, gather, sum or softplus as such: every op is one XNNPACK delegates).

**Chunks of up to 8, in factored form.** Within a chunk the state is ``h_t = sum_{s<=t}
exp(S_t - S_s) x_s`` (``S`` the prefix sums of ``g`` from the chunk's start), and
``exp(S_t - S_s) = exp(Q_t) exp(-Q_s)`` with ``Q = S - S_m`` taken against the chunk's middle
step ``m``. So the chunk is two exponentials, a product and a prefix sum (a matrix product
with a constant triangular matrix): O(1) work per token, where the masked ``c x c`` decay
matrix of the state-space-duality form costs ``c`` per token and channel (the decays here are
per channel: no matrix is shared across channels; measured in docs/benchmarks.md, that form ran
6-9x slower in onnxruntime at MobileMamba's sizes). All sums of ``g`` are matrix products with
0/+-1 constants over at most one chunk: local sums, no long prefix sum that would cancel.
A chunk has 8 steps, or 5 to 7 where that divides the length (:func:`chunk_size`: 196 tokens,
a 14x14 map, are 28 chunks of 7), so that few lengths need padding.

**Bounded exponents.** Each step's log decay is clamped at ``-16`` (a decay below
``exp(-16) = 1.1e-7`` of the state, float32's resolution, leaves it as ``exp(-16)``), so over
half a chunk ``|Q| <= 64``: ``exp(+-Q)`` never overflows and never underflows where it matters
(inputs up to ~1e9 in magnitude). The rounding of ``Q`` (at most ``64 * 2**-23`` absolute) is
the form's error bound; with ordinary decays it is ~1e-7.

**Levels.** The chunk ends form a shorter recurrence (chunk decay = the chunk's summed log
decay, clamped again; input = the chunk's end state from a zero start), scanned by the same
factored form in chunks of up to 8; the state entering each block of chunks then comes from a
masked matrix over the blocks (exact segment sums of their decays by one matrix product, exp
of non-positive numbers only). Two levels and the block matrix serve every ``L <= 4096`` with
the same ops (a 1024x1024 image at stride 16); longer sequences get one more level per 8x.
Padding at the end (decay 1, input 0) leaves both directions' states unchanged.

**Directions.** A reversed scan is the forward one with every constant matrix mirrored, so
both directions of SS2D run as one batch of two in every matrix product (no flips), or, for
XNNPACK, each on its own, where every product with a constant is a linear layer (its fully
connected op runs these tall, narrow products 2-3x as fast as its batched product).

**Inference.** Without gradients the factored inputs are ``x / e_t`` (one division where
training takes ``exp(-Q) x``, whose gradient cannot overflow).
"""
import functools
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['graph_softplus', 'chunked_linear_scan', 'chunk_size', 'selective_scan_chunked',
           'ss2d_scan_chunked', 'ss2d_scan_graph', 'CHUNK', 'MIN_LOG_DECAY']

CHUNK = 8               # most steps per factored chunk (and chunks per level-2 block)
MIN_LOG_DECAY = -16.0   # per-step clamp: |Q| <= (CHUNK / 2) * 16 = 64
_TOP_MAX = 64           # blocks in the masked top level (its constant is n x n^2)
_MASKED = -1.0e4        # exponent of masked entries: exp() gives exactly 0
_SOFTPLUS_LINEAR = 80.0  # softplus(x) = x beyond here (exp(80) is finite in float32)


def graph_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) = log(1 + exp(x))`` from ops every graph runtime runs fast and XNNPACK
    delegates (``minimum, exp, add, log, maximum``; onnxruntime's own ``Softplus`` kernel takes
    ~50x the time of an ``Exp``).

    ``max(x, log(1 + exp(min(x, 80))))``: the ``min`` keeps ``exp`` finite, the ``max`` gives
    ``x`` above 80 (where ``log(1 + exp(x)) = x`` in float32). Below about -16, ``1 + exp(x)``
    rounds to 1 and the result to 0 instead of ``exp(x) < 1.2e-7``: an absolute error under
    float32's resolution of 1 (a step size that small moves no state).

    Args:
        x (Tensor): any shape, float.

    Returns:
        Tensor: ``softplus(x)``, shaped as ``x``; differentiable.
    """
    return torch.maximum(x, torch.log(torch.exp(torch.clamp(x, max=_SOFTPLUS_LINEAR)) + 1.0))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32; no op (none in an exported graph either) when it is already."""
    return t if t.dtype == torch.float32 else t.float()


# ------------------------------------------------------------------------- constants
def _untraced_constant(array: np.ndarray) -> torch.Tensor:
    """``array`` as a real float32 CPU tensor even while a tracer runs (``torch.export``):
    a constant of the graph (a weight XNNPACK packs), not ops that build it."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
    with unset_fake_temporarily(), disable_proxy_modes_tracing():
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _mirrored(matrix: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """``matrix`` (inputs x outputs) for the reversed scan: its first ``rows`` rows and
    ``columns`` columns (one per step) mirrored; those after them (per chunk, not per step)
    keep their place."""
    out = matrix.copy()
    out[:rows] = out[:rows][::-1]
    out[:, :columns] = out[:, :columns][:, ::-1]
    return out


def _chunk_matrices(c: int, exclusive: bool) -> dict:
    """The constant matrices of one factored chunk of ``c`` steps (forward scan; rows: input
    position ``r``; ``S`` the prefix sums of the log decays from the chunk's start, ``m`` the
    middle step).

    * ``target`` (c, c): the exponent of output ``t``'s factor, ``Q_t = S_t - S_m``
      (``exclusive``: ``S_{t-1} - S_m``, for the state entering step ``t``);
    * ``source`` (c, c): ``S_m - S_s``, the exponent of input ``s``'s factor (``-target``
      unless ``exclusive``);
    * ``prefix_sum`` (c, c): which factored inputs output ``t`` sums (``s <= t``;
      ``exclusive``: ``s < t``);
    * ``to_end``, ``to_middle``, ``total`` (c, 1): ``S_end - S_m``, ``S_m`` and ``S_end``:
      the exponents of the chunk's end state and of its carry, and the chunk's total log
      decay (one product each: a single-column output needs no slicing, which XNNPACK runs
      as a copy per row);
    * ``whole`` (c, 1): the sum of all factored inputs (the end state's).
    """
    m = (c - 1) // 2
    r = np.arange(c)[:, None]
    t = np.arange(c)[None, :]

    def from_middle(last):  # S_last - S_m as a combination of the steps r
        return ((r > m) & (r <= last)).astype(np.float32) - ((r > last) & (r <= m))

    last = t - 1 if exclusive else t
    column = np.ones((c, 1), np.float32)
    return dict(target=from_middle(last), source=-from_middle(t),
                prefix_sum=(r <= last).astype(np.float32), to_end=(r > m) * column,
                to_middle=(r <= m) * column, total=column, whole=column)


def _block_matrix(n: int) -> Tuple[np.ndarray, ...]:
    """The masked top level over ``n`` blocks, as matrices on a row's ``n * n`` pairs
    ``(k, j)``: ``(n, n*n)`` exact segment sums (the log decays of blocks ``j < i < k``: from
    the end of block ``j`` to the start of block ``k``), the ``(1, n*n)`` bias that masks
    ``j >= k``, ``(n, n*n)`` copying end state ``j`` to its pairs and ``(n*n, n)`` summing the
    pairs of block ``k``: large matrix products, not ``rows`` products of ``n x n`` matrices."""
    i = np.arange(n)[:, None, None]
    k = np.arange(n)[None, :, None]
    j = np.arange(n)[None, None, :]
    weights = ((j < i) & (i < k)).astype(np.float32).reshape(n, n * n)
    bias = np.where(j[0] < k[0], 0.0, _MASKED).astype(np.float32).reshape(1, n * n)
    spread = np.broadcast_to(i == j, (n, n, n)).astype(np.float32).reshape(n, n * n)
    gather = np.broadcast_to(i == k, (n, n, n)).astype(np.float32).reshape(n, n * n).T
    return weights, bias, spread, np.ascontiguousarray(gather)


def _product_constant(matrices: Sequence[np.ndarray]) -> torch.Tensor:
    """The right operand of :func:`_product` from one ``(inputs, outputs)`` matrix per
    direction: stacked ``(K, inputs, outputs)`` for a batched product, or for one direction
    ``(outputs, inputs)``, a linear layer's weight."""
    if len(matrices) == 1:
        return _untraced_constant(matrices[0].T)
    return _untraced_constant(np.stack(matrices))


def _product(a: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """``a (K, rows, inputs)`` times a constant of :func:`_product_constant`: one batched
    product, or for one direction a linear layer (XNNPACK's fully connected op, 2-3x as fast
    as its batched product on these tall, narrow operands)."""
    if constant.dim() == 3:
        return torch.bmm(a, _on(constant, a))
    return F.linear(a, _on(constant, a))


@functools.lru_cache(maxsize=None)
def _chunk_constants(c: int, exclusive: bool, reverse: Tuple[bool, ...]) -> dict:
    """:func:`_chunk_matrices` per direction as product operands (:func:`_product_constant`;
    a reversed direction's mirrored: its steps and outputs run backwards); built once."""
    forward = _chunk_matrices(c, exclusive)
    columns = dict(target=c, source=c, prefix_sum=c, to_end=0, to_middle=0, total=0,
                   whole=0)  # per step
    return {name: _product_constant([_mirrored(m, c, columns[name]) if rev else m
                                     for rev in reverse])
            for name, m in forward.items()}


@functools.lru_cache(maxsize=None)
def _block_constants(n: int, reverse: Tuple[bool, ...]) -> Tuple[torch.Tensor, ...]:
    """:func:`_block_matrix` per direction: the bias stacked ``(K, 1, n*n)`` (``(1, n*n)``
    for one direction), the rest as product operands (:func:`_product_constant`); a reversed
    direction's mirrored (its block ``k`` is block ``n - 1 - k``)."""
    stacked = [[] for _ in range(4)]
    for rev in reverse:
        weights, bias, spread, gather = _block_matrix(n)
        if rev:  # every block index runs backwards
            weights = weights.reshape(n, n, n)[::-1, ::-1, ::-1].reshape(n, n * n)
            bias = bias.reshape(n, n)[::-1, ::-1].reshape(1, n * n)
            spread = spread.reshape(n, n, n)[::-1, ::-1, ::-1].reshape(n, n * n)
            gather = gather.reshape(n, n, n)[::-1, ::-1, ::-1].reshape(n * n, n)
        for out, matrix in zip(stacked, (weights, bias, spread, gather)):
            out.append(matrix)
    weights, bias, spread, gather = stacked
    bias = _untraced_constant(bias[0] if len(reverse) == 1 else np.stack(bias))
    return (_product_constant(weights), bias, _product_constant(spread),
            _product_constant(gather))


def _on(constant: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A cached CPU constant where ``like`` is (a copy only off the CPU)."""
    return constant if like.device.type == 'cpu' else constant.to(like.device)


# ------------------------------------------------------------------------- the levels
def chunk_size(length: int) -> int:
    """Steps per chunk for a sequence of ``length``: all of it up to 8, else the largest
    divisor from 8 down to 5 (no padding: 196 tokens, a 14x14 map, are 28 chunks of 7), else
    8 with padding."""
    if length <= CHUNK:
        return length
    return next((c for c in range(CHUNK, 4, -1) if length % c == 0), CHUNK)


def _pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` zero-padded at the end of its last dim to a multiple of ``multiple``."""
    pad = -x.shape[-1] % multiple
    return F.pad(x, (0, pad)) if pad else x


def _unpad_last(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x[..., :length]``, no op when nothing was padded (an exported no-op slice is a copy)."""
    return x[..., :length] if x.shape[-1] != length else x


def _factored_chunks(g: torch.Tensor, x: torch.Tensor, reverse: Tuple[bool, ...],
                     exclusive: bool) -> dict:
    """One level: ``g, x (K, rows, c)`` (clamped log decays, inputs), each row a chunk of the
    recurrence in factored form: ``state_t = e_t (sum_{s<=t} f_s x_s + exp(S_m) H)`` with
    ``e = exp(Q)``, ``f = exp(-Q)`` and ``H`` the state entering the chunk
    (:func:`_states`). ``exclusive``: the states entering each step instead of after it.

    Returns a dict: ``target`` (``e``) and ``weighted`` (``f x``), (K, rows, c); per chunk,
    (K, rows, 1): ``end`` (its end state from a zero start), ``total`` (its summed log decay)
    and ``carry`` (``exp(S_m)``).
    """
    k = _chunk_constants(g.shape[-1], exclusive, reverse)

    def product(name):
        return _product(g, k[name])

    target = torch.exp(product('target'))
    if exclusive or (torch.is_grad_enabled() and (g.requires_grad or x.requires_grad)):
        # exp(-(S_s - S_m)) x_s as a product (the gradient of x / e, -x / e^2, would overflow)
        weighted = torch.exp(product('source')) * x
    else:  # inference: f = 1 / e, one division instead of a product and an exp
        weighted = x / target
    whole = _product(weighted, k['whole'])                       # all inputs of the chunk
    return dict(target=target, weighted=weighted, end=torch.exp(product('to_end')) * whole,
                total=product('total'), carry=torch.exp(product('to_middle')),
                prefix_sum=k['prefix_sum'])


def _states(level: dict, entering: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The states of a level's chunks (:func:`_factored_chunks`) given the state entering
    each chunk ``(K, rows, 1)`` (None: zero); the carried state is added to every step's sum
    by broadcasting (no concatenation: a copy of the chunk)."""
    summed = _product(level['weighted'], level['prefix_sum'])
    if entering is not None:
        summed = summed + level['carry'] * entering
    return level['target'] * summed


def _entering_blocks(g: torch.Tensor, ends: torch.Tensor,
                     reverse: Tuple[bool, ...]) -> torch.Tensor:
    """The state entering each of ``n`` blocks ``(K, rows, n)`` from their clamped log decays
    ``g`` and end states from a zero start ``ends``: one masked ``n x n`` matrix per row
    (``exp`` of exact segment sums, masked entries ``exp(-1e4) = 0``) times the end states."""
    weights, bias, spread, gather = _block_constants(g.shape[-1], reverse)
    exponents = _product(g, weights) + _on(bias, g)              # (K, rows, n*n): pairs (k, j)
    contributions = torch.exp(exponents) * _product(ends, spread)
    return _product(contributions, gather)


def _entering_states(g: torch.Tensor, ends: torch.Tensor,
                     reverse: Tuple[bool, ...]) -> torch.Tensor:
    """The state entering each item of the recurrence ``H_k = exp(g_k) H_{k-1} + ends_k``
    (``g, ends (K, rows, n)``; ``g`` clamped): a factored level of chunks of up to 8 items,
    then the blocks (:func:`_entering_blocks`), or further levels while more than 64 blocks."""
    kk, rows, n = g.shape
    c = chunk_size(n)
    g, ends = _pad_last(g, c), _pad_last(ends, c)
    blocks = g.shape[-1] // c
    level = _factored_chunks(g.reshape(kk, rows * blocks, c), ends.reshape(kk, rows * blocks, c),
                             reverse, exclusive=True)
    if blocks == 1:  # one block: it enters from the zero state
        states = _states(level)
    else:
        total = torch.clamp(level['total'], min=MIN_LOG_DECAY).reshape(kk, rows, blocks)
        block_ends = level['end'].reshape(kk, rows, blocks)
        entering = (_entering_states if blocks > _TOP_MAX else _entering_blocks)(
            total, block_ends, reverse)
        states = _states(level, entering.reshape(kk, rows * blocks, 1))
    return _unpad_last(states.reshape(kk, rows, blocks * c), n)


def chunked_linear_scan(log_decay: torch.Tensor, inputs: torch.Tensor,
                        reverse: Sequence[bool]) -> torch.Tensor:
    """``h_t = exp(g_t) h_{t-1} + x_t`` along the last dim (``reverse[k]``: ``h_t = exp(g_t)
    h_{t+1} + x_t`` for direction ``k``), zero initial state, as a fixed set of large ops.

    Args:
        log_decay (Tensor): ``g <= 0``, (K, rows, L): K directions (or any groups with their
            own ``reverse`` flag), each with ``rows`` independent sequences.
        inputs (Tensor): ``x``, shaped as ``log_decay``.
        reverse (Sequence[bool]): one flag per direction.

    Returns:
        Tensor: ``h`` (K, rows, L), float32; differentiable. Equal to the sequential
        recurrence up to float32 rounding, except that decays below ``exp(-16)`` per step act
        as ``exp(-16)`` (see the module docstring).
    """
    if log_decay.dim() != 3 or inputs.shape != log_decay.shape:
        raise ValueError(f'chunked_linear_scan: log_decay and inputs must both be (K, rows, L); '
                         f'got {tuple(log_decay.shape)} and {tuple(inputs.shape)}')
    reverse = tuple(bool(r) for r in reverse)
    kk, rows, length = log_decay.shape
    if len(reverse) != kk:
        raise ValueError(f'chunked_linear_scan: {len(reverse)} reverse flags for K = {kk} '
                         'directions: give one per direction')
    c = chunk_size(length)
    g = _pad_last(torch.clamp(_f32(log_decay), min=MIN_LOG_DECAY), c)
    x = _pad_last(_f32(inputs), c)
    chunks = g.shape[-1] // c
    level = _factored_chunks(g.reshape(kk, rows * chunks, c), x.reshape(kk, rows * chunks, c),
                             reverse, exclusive=False)
    if chunks == 1:
        states = _states(level)
    else:
        entering = _entering_states(
            torch.clamp(level['total'], min=MIN_LOG_DECAY).reshape(kk, rows, chunks),
            level['end'].reshape(kk, rows, chunks), reverse)
        states = _states(level, entering.reshape(kk, rows * chunks, 1))
    return _unpad_last(states.reshape(kk, rows, chunks * c), length)


# ------------------------------------------------------------------------- selective scans
def _step_sizes(delta: torch.Tensor, delta_bias: Optional[torch.Tensor],
                delta_softplus: bool) -> torch.Tensor:
    delta = _f32(delta)
    if delta_bias is not None:
        delta = delta + _f32(delta_bias).view(-1, 1)
    return graph_softplus(delta) if delta_softplus else delta


def _read_out(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``sum_n C[n] h[n]``: ``h (..., d, N, L)`` and ``C (..., 1, N, L)`` to ``(..., d, L)``.
    With one state (the released models) a product of views: no reduction op."""
    if h.shape[-2] == 1:
        return h.reshape(*h.shape[:-2], h.shape[-1]) * C.reshape(*C.shape[:-2], C.shape[-1])
    return (h * C).sum(-2)


def ss2d_scan_graph(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, skip: torch.Tensor,
                    split_directions: bool = False) -> torch.Tensor:
    """SS2D's two-direction scan as an exported MobileMamba runs it: the step sizes' bias, ``A``
    and the summed skip weights come in ready (computed once when the model is folded).

    For each direction ``k`` (0 forwards, 1 backwards), channel ``c`` and state ``n``::

        dt_k = softplus(delta[:, k])                      (graph_softplus)
        h_kt = exp(dt_kt A_k[c, n]) h_k,t-+1 + dt_kt u_t B_k[n, t]
        y_t  = sum_k sum_n C_k[n, t] h_kt + skip[c] u_t

    Args:
        u (Tensor): inputs, (batch, d, L).
        delta (Tensor): step sizes before the softplus, bias included, (batch, K, d, L),
            K = 1 or 2.
        A (Tensor): the state matrix (negative), (K*d, N).
        B (Tensor): input projections, (batch, K, N, L).
        C (Tensor): output projections, (batch, K, N, L).
        skip (Tensor): the skip weights summed over the directions, (d,).
        split_directions (bool): scan each direction on its own (slices of the inputs, one
            constant operand per product: a linear layer), instead of both as one batch of
            two (batched products with stacked constants, half the ops). XNNPACK runs the
            first faster (B1 at 512x512 in ExecuTorch: 1.25x RegNetX-800MF's time against
            1.32x), onnxruntime the second (1.43x against 1.46x). Default: False.

    Returns:
        Tensor: ``y`` (batch, d, L), channel-major (the flattened NCHW map), float32;
        differentiable.
    """
    if split_directions:
        return _ss2d_scan_per_direction(u, delta, A, B, C, skip)
    batch, directions, channels, length = delta.shape
    n_state = A.shape[1]
    # directions lead (each has its own constants in the scan's batched products); the
    # broadcasts are per channel, per token or per direction, never across a 5-d layout
    dt = graph_softplus(_directions_first(_f32(delta)))               # (K, b, d, L)
    A = _f32(A).reshape(directions, 1, channels, n_state)
    u32 = _f32(u).reshape(1, batch, channels, length)
    Bk, Ck = _directions_first(_f32(B)), _directions_first(_f32(C))  # (K, b, N, L)
    y = _scan_and_read_out(dt, A, u32, Bk, Ck, [k == 1 for k in range(directions)])
    if directions == 2:  # the sum over directions as a product with [1, 1]: no copies
        y = torch.bmm(_on(_direction_sum(), y), y.reshape(1, directions, -1))
    return y.reshape(batch, channels, length) + _f32(u) * _f32(skip).reshape(channels, 1)


def _ss2d_scan_per_direction(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, skip: torch.Tensor
                             ) -> torch.Tensor:
    """:func:`ss2d_scan_graph` with ``split_directions``."""
    channels = delta.shape[2]
    u32 = _f32(u)
    y = u32 * _f32(skip).reshape(channels, 1)
    # each direction on its own: the scan's products then have one constant operand each, a
    # linear layer (XNNPACK's fully connected op, 2-3x as fast as its batched product here);
    # per-direction parts are slices along a leading dim (no select: XNNPACK has none)
    for k in range(delta.shape[1]):
        dt = graph_softplus(_f32(_direction(delta, k)))                 # (b, d, L)
        a = _f32(A)[k * channels:(k + 1) * channels]                # (d, N)
        Bk, Ck = _f32(_direction(B, k)), _f32(_direction(C, k))       # (b, N, L)
        y = y + _scan_and_read_out(dt, a, u32, Bk, Ck, [k == 1])
    return y


def _scan_and_read_out(dt: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, reverse: Sequence[bool]) -> torch.Tensor:
    """``sum_n C[n] h[n]`` of the scan ``h_t = exp(dt_t A) h_t-+1 + dt_t u_t B_t`` for the
    directions of ``reverse``: ``dt (..., d, L)``, ``A`` broadcast as ``(..., d, N)``, ``u``
    as ``dt``, ``B`` and ``C (..., N, L)``; the leading dims hold ``len(reverse)`` groups (the
    scan's batch of directions). With one state (the released models) no reduction op."""
    n_state, length = A.shape[-1], dt.shape[-1]
    if n_state == 1:
        log_decay, inputs = dt * A, dt * u * B
    else:
        log_decay = dt.unsqueeze(-2) * A.unsqueeze(-1)                   # (..., d, N, L)
        inputs = (dt * u).unsqueeze(-2) * B.unsqueeze(-3)
    groups = len(reverse)
    h = chunked_linear_scan(log_decay.reshape(groups, -1, length),
                            inputs.reshape(groups, -1, length), reverse=reverse)
    if n_state == 1:
        return h.reshape(dt.shape) * C
    return (h.reshape(*dt.shape[:-1], n_state, length) * C.unsqueeze(-3)).sum(-2)


@functools.lru_cache(maxsize=None)
def _direction_sum() -> torch.Tensor:
    return _untraced_constant(np.ones((1, 1, 2), np.float32))


def _directions_first(t: torch.Tensor) -> torch.Tensor:
    """``(batch, K, ...)`` as ``(K, batch, ...)`` (a view for one image)."""
    if t.shape[0] == 1:
        return t.reshape(t.shape[1], 1, *t.shape[2:])
    return t.transpose(0, 1)


def _direction(t: torch.Tensor, k: int) -> torch.Tensor:
    """Direction ``k`` of ``t (batch, K, ...)`` as ``(batch, ...)``: a slice (for one image
    a contiguous block), not a select."""
    return t[:, k:k + 1].reshape(t.shape[0], *t.shape[2:])


def ss2d_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                      delta_bias: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`ss2d_scan_graph` with the arguments of :func:`~mmmobilemamba.ops.ss2d_scan`
    (``A = -exp(A_log)``; the skip weights and step-size bias per direction).

    Args:
        u (Tensor): inputs, (batch, d, L).
        delta (Tensor): step sizes before bias/softplus, (batch, K, d, L), K = 1 or 2.
        A_log (Tensor): log of minus the state matrix, (K*d, N).
        B (Tensor): input projections, (batch, K, N, L).
        C (Tensor): output projections, (batch, K, N, L).
        D (Tensor): skip connection, (K*d,).
        delta_bias (Tensor, optional): added to ``delta`` before the softplus, (K*d,).

    Returns:
        Tensor: ``y`` (batch, d, L), channel-major, float32; differentiable.
    """
    batch, directions, channels, length = delta.shape
    if delta_bias is not None:
        delta = _f32(delta) + _f32(delta_bias).reshape(1, directions, channels, 1)
    skip = _f32(D).reshape(directions, channels).sum(0)
    return ss2d_scan_graph(u, delta, -torch.exp(_f32(A_log)), B, C, skip)


def selective_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           delta_bias: Optional[torch.Tensor] = None,
                           delta_softplus: bool = True, reverse: bool = False) -> torch.Tensor:
    """One direction of the selective scan in the token-major layout of
    :func:`~mmmobilemamba.ops.selective_scan_channels_last` (``u, delta (batch, L, D)``; ``B,
    C (batch, L, N)`` or ``(batch, L, G, N)``), by :func:`chunked_linear_scan`.

    Args: as :func:`~mmmobilemamba.ops.selective_scan_channels_last` (``A`` is the state
        matrix, negative, (D, N)).

    Returns:
        Tensor: (batch, L, D) in the dtype of ``u``; arithmetic is float32.
    """
    batch, length, channels = u.shape
    n_state = A.shape[1]
    B4 = B if B.dim() == 4 else B.unsqueeze(2)
    groups = B4.shape[2]
    per_group = channels // groups
    dt = _step_sizes(delta.transpose(1, 2), delta_bias, delta_softplus)  # (b, D, L)
    dt = dt.reshape(batch, groups, per_group, 1, length)
    u32 = _f32(u).transpose(1, 2).reshape(batch, groups, per_group, 1, length)
    Bg = _f32(B4).permute(0, 2, 3, 1).reshape(batch, groups, 1, n_state, length)
    Cg = C if C.dim() == 4 else C.unsqueeze(2)
    Cg = _f32(Cg).permute(0, 2, 3, 1).reshape(batch, groups, 1, n_state, length)
    A32 = _f32(A).reshape(1, groups, per_group, n_state, 1)
    log_decay, inputs = dt * A32, dt * u32 * Bg
    rows = batch * channels * n_state
    h = chunked_linear_scan(log_decay.reshape(1, rows, length), inputs.reshape(1, rows, length),
                            reverse=[reverse])
    y = _read_out(h.reshape(batch, groups, per_group, n_state, length), Cg)
    y = y.reshape(batch, channels, length)
    if D is not None:
        y = y + _f32(u).transpose(1, 2) * _f32(D).view(channels, 1)
    return y.transpose(1, 2).to(u.dtype)
