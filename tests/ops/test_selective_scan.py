"""The fast selective scan against its sequential twin and the reference fixture."""
from pathlib import Path

import pytest
import torch

from mmmobilemamba.ops import (linear_recurrence, selective_scan, selective_scan_channels_last,
                              selective_scan_reference)

DATA = Path(__file__).parent.parent / 'data'


def _inputs(batch=2, k=2, d=3, length=37, n=1, seed=0, delta_scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    kd = k * d
    return dict(
        u=torch.randn(batch, kd, length, generator=g, dtype=dtype),
        delta=delta_scale * torch.randn(batch, kd, length, generator=g, dtype=dtype),
        A=-torch.rand(kd, n, generator=g, dtype=dtype) - 0.05,
        B=torch.randn(batch, k, n, length, generator=g, dtype=dtype),
        C=torch.randn(batch, k, n, length, generator=g, dtype=dtype),
        D=torch.randn(kd, generator=g, dtype=dtype),
        delta_bias=0.1 * torch.randn(kd, generator=g, dtype=dtype),
    )


def _grads(fn, inputs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def test_matches_reference_fixture():
    fx = torch.load(DATA / 'selective_scan_parity.pt')
    out, grads = _grads(selective_scan, fx['inputs'])
    torch.testing.assert_close(out, fx['output'], atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, fx['grads'][name], atol=2e-5, rtol=1e-4, msg=name)


def test_twin_matches_reference_fixture():
    fx = torch.load(DATA / 'selective_scan_parity.pt')
    out, _ = _grads(selective_scan_reference, fx['inputs'])
    torch.testing.assert_close(out, fx['output'], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('length', [1, 2, 31, 32, 33, 37, 65, 1025])
def test_values_and_grads_match_twin(length):
    inputs = _inputs(length=length, n=1 if length != 33 else 2)
    out, grads = _grads(selective_scan, inputs)
    ref, ref_grads = _grads(selective_scan_reference, inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_values_match_twin_at_4096():
    inputs = _inputs(batch=1, length=4096, delta_scale=2.0)
    with torch.no_grad():
        torch.testing.assert_close(selective_scan(**inputs), selective_scan_reference(**inputs),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_grads_match_twin_at_4096():
    inputs = _inputs(batch=1, d=2, length=4096)
    out, grads = _grads(selective_scan, inputs)
    ref, ref_grads = _grads(selective_scan_reference, inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_long_sequence_is_finite_and_matches_blocks():
    """L = 65536: finite, and equal to two half-length scans chained by hand."""
    inputs = _inputs(batch=1, k=2, d=2, length=65536, delta_scale=3.0)
    out = selective_scan(**inputs)
    assert torch.isfinite(out).all()
    # spot-check the last 64 steps against the twin started from the exact state
    ref = selective_scan_reference(**{k: (v[..., -2048:] if v.dim() >= 3 else v)
                                      for k, v in inputs.items()})
    # a decaying state forgets 2000+ steps back: the tails agree
    torch.testing.assert_close(out[..., -64:], ref[..., -64:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('delta_scale', [1e-6, 30.0, 1e4])
def test_extreme_deltas_stay_finite(delta_scale):
    inputs = _inputs(length=300, delta_scale=delta_scale)
    out, grads = _grads(selective_scan, inputs)
    ref, ref_grads = _grads(selective_scan_reference, inputs)
    assert torch.isfinite(ref).all()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-4)
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name


def test_half_inputs_compute_in_float32():
    inputs = _inputs(length=50)
    half = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan(**half)
    assert out.dtype == torch.bfloat16
    ref = selective_scan_reference(**{k: v.float() for k, v in half.items()})
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_linear_recurrence_gradcheck():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 70, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(2, 70, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(linear_recurrence, (a, b))


def test_bad_layout_and_backend_raise():
    inputs = _inputs()
    with pytest.raises(ValueError, match='backend'):
        selective_scan(**inputs, backend='triton')
    bad = dict(inputs, A=inputs['A'][:3])
    with pytest.raises(ValueError, match='A must be'):
        selective_scan(**bad)
    bad = dict(inputs, B=inputs['B'][..., :-1])
    with pytest.raises(ValueError, match='B must be'):
        selective_scan(**bad)


def test_cuda_backend_without_kernel_is_a_clear_error():
    with pytest.raises(RuntimeError, match='mamba_ssm'):
        selective_scan(**_inputs(), backend='cuda')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_torch_backend_on_cuda_matches_cpu():
    inputs = _inputs(length=777)
    out = selective_scan(**{k: v.cuda() for k, v in inputs.items()}, backend='torch')
    torch.testing.assert_close(out.cpu(), selective_scan(**inputs), atol=1e-5, rtol=1e-4)


def _to_channels_last(inputs, direction, reverse):
    """One direction of reference-layout inputs in the channels-last layout (flipped back in
    time when ``reverse``: the reference scans the flipped sequence)."""
    k, d = inputs['B'].shape[1], inputs['A'].shape[0] // inputs['B'].shape[1]
    part = slice(direction * d, (direction + 1) * d)

    def seq(t):  # (batch, K*D, L) -> (batch, L, D) of this direction
        return t[:, part].transpose(1, 2)

    def proj(t):  # (batch, K, N, L) -> (batch, L, N)
        return t[:, direction].transpose(1, 2)

    return dict(u=seq(inputs['u']), delta=seq(inputs['delta']), A=inputs['A'][part],
                B=proj(inputs['B']), C=proj(inputs['C']), D=inputs['D'][part],
                delta_bias=inputs['delta_bias'][part], reverse=reverse)


@pytest.mark.parametrize('length', [1, 2, 17, 37, 256, 1025])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('n', [1, 2])
def test_channels_last_scan_matches_twin(length, reverse, n):
    """Forwards: the twin's first direction. Reverse: the twin run on the flipped sequence,
    flipped back. Values and gradients."""
    inputs = _inputs(batch=2, k=1, d=5, length=length, n=n, seed=length)

    def twin(**kw):
        if not reverse:
            return selective_scan_reference(**kw)
        flipped = {key: (v.flip(-1) if v.dim() >= 3 else v) for key, v in kw.items()}
        return selective_scan_reference(**flipped).flip(-1)

    ref, ref_grads = _grads(twin, inputs)
    leaves = {key: v.detach().clone().requires_grad_(True) for key, v in inputs.items()}
    out = selective_scan_channels_last(**_to_channels_last(leaves, 0, reverse)).transpose(1, 2)
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weight).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for key, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, ref_grads[key], atol=1e-4, rtol=1e-4, msg=key)


def test_channels_last_scan_inference_path_equals_autograd_path():
    inputs = _to_channels_last(_inputs(batch=1, k=1, d=8, length=300), 0, True)
    with torch.no_grad():
        fast = selective_scan_channels_last(**inputs)
    tracked = selective_scan_channels_last(**{k: (v.requires_grad_(True) if torch.is_tensor(v) else v)
                                              for k, v in inputs.items()})
    torch.testing.assert_close(fast, tracked.detach(), atol=0, rtol=0)


@pytest.mark.parametrize('delta_scale', [1e-6, 1e4])
def test_channels_last_scan_long_and_extreme_is_finite(delta_scale):
    inputs = _to_channels_last(_inputs(batch=1, k=1, d=2, length=65536, delta_scale=delta_scale),
                               0, True)
    with torch.no_grad():
        out = selective_scan_channels_last(**inputs)
    assert torch.isfinite(out).all()


def test_channels_last_scan_bad_layout_raises():
    inputs = _to_channels_last(_inputs(batch=1, k=1, d=4, length=10), 0, False)
    with pytest.raises(ValueError, match='A must be'):
        selective_scan_channels_last(**dict(inputs, A=inputs['A'][:2]))
    with pytest.raises(ValueError, match='B must be'):
        selective_scan_channels_last(**dict(inputs, B=inputs['B'][:, :-1]))


@pytest.mark.parametrize('dim', [0, 1, 2])
@pytest.mark.parametrize('reverse', [False, True])
def test_linear_recurrence_any_dim_and_direction(dim, reverse):
    g = torch.Generator().manual_seed(dim)
    a = torch.rand(5, 40, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, 40, 3, generator=g, dtype=torch.float64)
    h = linear_recurrence(a, b, dim=dim, reverse=reverse)
    # sequential definition along ``dim``
    a_t, b_t = a.movedim(dim, 0), b.movedim(dim, 0)
    steps = range(a_t.shape[0] - 1, -1, -1) if reverse else range(a_t.shape[0])
    state, ref = torch.zeros_like(a_t[0]), torch.empty_like(a_t)
    for t in steps:
        state = a_t[t] * state + b_t[t]
        ref[t] = state
    torch.testing.assert_close(h, ref.movedim(0, dim))
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a_, b_: linear_recurrence(a_, b_, dim=dim, reverse=reverse), (a, b))


def test_optional_kernel_is_looked_up_once(monkeypatch):
    """SS2D asks for mamba_ssm's kernel on every CUDA forward; a failed import must not be
    retried (a search of the whole path) each time."""
    import builtins
    from mmmobilemamba.ops.selective_scan import _mamba_ssm_scan
    attempts = []
    real_import = builtins.__import__

    def counting_import(name, *args, **kwargs):
        if name.startswith('mamba_ssm'):
            attempts.append(name)
        return real_import(name, *args, **kwargs)

    _mamba_ssm_scan.cache_clear()
    monkeypatch.setattr(builtins, '__import__', counting_import)
    try:
        first = _mamba_ssm_scan()
        assert _mamba_ssm_scan() is first
        assert len(attempts) == 1
    finally:
        monkeypatch.undo()
        _mamba_ssm_scan.cache_clear()
