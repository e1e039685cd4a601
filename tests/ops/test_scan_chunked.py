"""The scan of exported graphs (``ops/scan_chunked``, ``backend='export'``): equal to the
sequential twins, values and gradients, from 1 to 16,384 tokens, both directions, one and two
states; finite at extreme step sizes; made of a fixed set of ops that XNNPACK delegates."""
import numpy as np
import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads, token_major_inputs

from mmmobilemamba.ops import (selective_scan_channels_last,
                               selective_scan_channels_last_reference, ss2d_scan,
                               ss2d_scan_reference)
from mmmobilemamba.ops.scan_chunked import (MIN_LOG_DECAY, chunk_size, chunked_linear_scan,
                                            graph_softplus, ss2d_scan_graph)

ATOL = RTOL = 1e-5          # fp32, the form against the sequential twin
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-5


def _tokens(batch=1, length=37, d=3, n=1, seed=0, delta_scale=1.0):
    return token_major_inputs(batch, length, d, n, seed, delta_scale)


def _ss2d_inputs(batch=2, d=6, length=37, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(batch, d, length, generator=g),
                delta=torch.randn(batch, 2, d, length, generator=g),
                A_log=0.5 * torch.randn(2 * d, n, generator=g),
                B=torch.randn(batch, 2, n, length, generator=g),
                C=torch.randn(batch, 2, n, length, generator=g),
                D=torch.randn(2 * d, generator=g),
                delta_bias=0.1 * torch.randn(2 * d, generator=g))


def _sequential(log_decay: np.ndarray, inputs: np.ndarray, reverse: bool) -> np.ndarray:
    """The recurrence in float64, step by step."""
    h = np.zeros(log_decay.shape[:-1])
    out = np.empty(log_decay.shape)
    steps = range(log_decay.shape[-1])
    for t in (reversed(steps) if reverse else steps):
        h = np.exp(log_decay[..., t]) * h + inputs[..., t]
        out[..., t] = h
    return out


# ------------------------------------------------------------------ the recurrence
@pytest.mark.parametrize('length', [1, 2, 7, 8, 9, 49, 63, 64, 65, 127, 196, 200, 511, 512,
                                    513, 1024, 4096, 4097, 16384])
def test_recurrence_equals_the_sequential_one_in_float64(length):
    """Both directions at once (a batch of two with mirrored constants), every padding and
    level count: the first level alone, the block matrix, and a third level beyond 4096."""
    g = torch.Generator().manual_seed(length)
    log_decay = -3 * torch.rand(2, 3, length, generator=g)
    inputs = torch.randn(2, 3, length, generator=g)
    h = chunked_linear_scan(log_decay, inputs, reverse=[False, True])
    expected = np.stack([_sequential(log_decay[k].double().numpy(), inputs[k].double().numpy(),
                                     reverse=k == 1) for k in range(2)])
    torch.testing.assert_close(h.double(), torch.from_numpy(expected), atol=ATOL, rtol=RTOL)
    # one direction at a time: its products are linear layers with 2-D constants
    for k in range(2):
        alone = chunked_linear_scan(log_decay[k:k + 1], inputs[k:k + 1], reverse=[k == 1])
        torch.testing.assert_close(alone.double(), torch.from_numpy(expected[k:k + 1]),
                                   atol=ATOL, rtol=RTOL)


def test_chunks_divide_the_length_where_they_can():
    assert [chunk_size(n) for n in (1, 5, 8, 16, 49, 196, 200, 4200, 13)] == \
        [1, 5, 8, 8, 7, 7, 8, 8, 8]
    assert chunk_size(25) == 5 and chunk_size(42) == 7 and chunk_size(36) == 6


def test_recurrence_checks_its_arguments():
    with pytest.raises(ValueError, match=r'both be \(K, rows, L\)'):
        chunked_linear_scan(torch.zeros(2, 3), torch.zeros(2, 3), [False, True])
    with pytest.raises(ValueError, match='one per direction'):
        chunked_linear_scan(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), [False])


def test_decays_below_the_clamp_leave_float32_resolution():
    """A step with decay below exp(-16) acts as exp(-16): the state before it leaks in at
    ~1e-7 of its size, float32's resolution of the state."""
    log_decay = torch.tensor([[[0.0, 0.0, -200.0, 0.0]]])
    inputs = torch.tensor([[[1e4, 1e4, 1.0, 0.0]]])
    h = chunked_linear_scan(log_decay, inputs, [False])
    assert h[0, 0, 2].item() == pytest.approx(1.0 + 2e4 * np.exp(MIN_LOG_DECAY), rel=1e-6)
    assert abs(h[0, 0, 2].item() - 1.0) < 2e4 * 1.2e-7


def test_strongest_clamped_decays_and_large_inputs_stay_finite():
    """Every step at the clamp: the factored exponents reach their bound of 64."""
    log_decay = torch.full((2, 4, 1000), -1e6)
    inputs = 1e8 * torch.randn(2, 4, 1000, generator=torch.Generator().manual_seed(0))
    h = chunked_linear_scan(log_decay, inputs, [False, True])
    assert torch.isfinite(h).all()
    clamped = np.full(log_decay.shape[1:], MIN_LOG_DECAY)
    expected = np.stack([_sequential(clamped, inputs[k].double().numpy(), reverse=k == 1)
                         for k in range(2)])
    torch.testing.assert_close(h.double(), torch.from_numpy(expected), rtol=RTOL, atol=1e-5 * 1e8)


# ------------------------------------------------------------------ the selective scans
@pytest.mark.parametrize('length,d', [(1, 4), (9, 4), (100, 4), (2048, 2)])
@pytest.mark.parametrize('n', [1, 2])
@pytest.mark.parametrize('reverse', [False, True])
def test_token_major_scan_equals_its_twin(length, d, n, reverse):
    inputs = _tokens(length=length, d=d, n=n, seed=length + n)
    assert_same_scan(
        scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend='export'),
        scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse),
        atol=ATOL, grad_atol=GRAD_ATOL)


@pytest.mark.parametrize('reverse', [False, True])
def test_token_major_scan_equals_its_twin_at_16384(reverse):
    """The longest sequences: values and gradients on two channels (about 10 s each)."""
    inputs = _tokens(length=16384, d=2, seed=16384)
    assert_same_scan(
        scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend='export'),
        scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse),
        atol=ATOL, grad_atol=GRAD_ATOL)


@pytest.mark.parametrize('length', [1, 64, 300])
@pytest.mark.parametrize('n', [1, 2])
def test_ss2d_scan_equals_its_twin(length, n):
    """Both directions, summed, in SS2D's layout; the output token-major as ss2d_scan's."""
    inputs = _ss2d_inputs(length=length, n=n, seed=length)
    fast = scan_and_grads(ss2d_scan, inputs, backend='export')
    assert_same_scan(fast, scan_and_grads(ss2d_scan_reference, inputs), atol=ATOL,
                     grad_atol=GRAD_ATOL)


@pytest.mark.parametrize('split_directions', [False, True])
@pytest.mark.parametrize('n', [1, 2])
def test_ss2d_graph_scan_takes_the_folded_arguments(split_directions, n):
    """ss2d_scan_graph (what the exported SS2D calls): the bias inside delta, A and the
    skip summed over the directions computed ahead; both directions as one batch or each on
    its own (ExecuTorch's form); values and gradients."""
    inputs = {k: v.requires_grad_() for k, v in _ss2d_inputs(length=50, n=n).items()}
    d = inputs['u'].shape[1]
    delta = inputs['delta'] + inputs['delta_bias'].view(1, 2, d, 1)
    out = ss2d_scan_graph(inputs['u'], delta, -torch.exp(inputs['A_log']), inputs['B'],
                          inputs['C'], inputs['D'].view(2, d).sum(0), split_directions)
    expected = ss2d_scan_reference(**inputs)
    torch.testing.assert_close(out.transpose(1, 2), expected, atol=ATOL, rtol=RTOL)
    weight = torch.randn_like(expected)
    got = torch.autograd.grad((out.transpose(1, 2) * weight).sum(), list(inputs.values()))
    want = torch.autograd.grad((expected * weight).sum(), list(inputs.values()))
    for name, a, b in zip(inputs, got, want):
        torch.testing.assert_close(a, b, atol=GRAD_ATOL, rtol=GRAD_RTOL,
                                   msg=lambda m, name=name: f'{name}: {m}')


@pytest.mark.parametrize('delta_scale', [30.0, 1e4])
@pytest.mark.parametrize('reverse', [False, True])
def test_extreme_step_sizes_stay_finite_and_close(delta_scale, reverse):
    """Huge step sizes: decays far below the clamp. Finite values and gradients, equal to the
    twin at the resolution of float32 states of that size (outputs reach ~1e5 at 1e4)."""
    inputs = _tokens(length=300, d=3, delta_scale=delta_scale)
    fast = scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend='export')
    twin = scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse)
    for out, grads in (fast, twin):
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(g).all() for g in grads.values())
    scale = twin[0].abs().max().item()
    torch.testing.assert_close(fast[0], twin[0], atol=1e-6 * scale, rtol=RTOL)
    # a clamped step's decay exp(-16) instead of ~0 moves dL/dA by dt exp(-16) |h|
    for name, grad in twin[1].items():
        torch.testing.assert_close(fast[1][name], grad, atol=5e-3 * grad.abs().max().item(),
                                   rtol=1e-4, msg=lambda m, name=name: f'{name}: {m}')


# ------------------------------------------------------------------ softplus
def test_graph_softplus_equals_softplus():
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([1e4, -1e4, 88.0, 89.0])])
    x.requires_grad_(True)
    out = graph_softplus(x)
    expected = torch.nn.functional.softplus(x.detach().double())
    # absolute error below float32's resolution of 1; relative to the value above it
    torch.testing.assert_close(out.double(), expected, atol=1.2e-7, rtol=2e-7)
    out.sum().backward()
    # at x = 80 exactly both sides of the maximum are equal and share the gradient
    smooth = x.detach() != 80.0
    torch.testing.assert_close(x.grad[smooth].double(), torch.sigmoid(x.detach()[smooth].double()),
                               atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------ the graph
_DELEGABLE = {'bmm', 'mm', 'linear', 'exp', 'log', 'mul', 'div', 'add', 'sub', 'neg', 'clamp', 'maximum',
              'minimum', 'view', 'reshape', 'slice', 'constant_pad_nd', 'transpose', 'permute',
              'unsqueeze', 'expand', '_unsafe_view', 'alias', 'sym_size', 'cat'}


@pytest.mark.parametrize('split_directions', [False, True])
def test_scan_is_a_fixed_set_of_delegable_ops(split_directions):
    """No cumsum, flip, where, softplus, sum, gather or select, and the same ops at every
    length from 4 blocks of 64 tokens to 64 blocks (fewer below, with fewer levels): no op
    per step."""

    class Scan(torch.nn.Module):
        def forward(self, *xs):
            return ss2d_scan_graph(*xs, split_directions=split_directions)

    counts = {}
    for length in (8, 64, 256, 1024, 4096):
        args = (torch.randn(1, 4, length), torch.randn(1, 2, 4, length), -torch.rand(8, 1),
                torch.randn(1, 2, 1, length), torch.randn(1, 2, 1, length), torch.randn(4))
        graph = torch.export.export(Scan(), args).graph
        ops = [n.target.__name__.split('.')[0] for n in graph.nodes if n.op == 'call_function']
        assert set(ops) <= _DELEGABLE, (length, set(ops) - _DELEGABLE)
        counts[length] = len(ops)
    assert counts[256] == counts[1024] == counts[4096], counts
    # both directions as one batch: 74 ops, 26 of them reshapes; each on its own: 144
    assert max(counts.values()) == counts[4096] <= (144 if split_directions else 74), counts
