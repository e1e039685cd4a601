"""The selective scan: the model's token-major scan against its sequential twin (same layout,
same signature), and the reference layout against the authors' fixture."""
from pathlib import Path

import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads

from mmmobilemamba.ops import (selective_scan, selective_scan_channels_last,
                              selective_scan_channels_last_reference, selective_scan_reference)

DATA = Path(__file__).parent.parent / 'data'


def _tokens(batch=2, length=37, d=5, n=1, seed=0, delta_scale=1.0, dtype=torch.float32):
    """Inputs of one direction in the token-major layout (batch, L, D)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, length, d, generator=g, dtype=dtype),
        delta=delta_scale * torch.randn(batch, length, d, generator=g, dtype=dtype),
        A=-torch.rand(d, n, generator=g, dtype=dtype) - 0.05,
        B=torch.randn(batch, length, n, generator=g, dtype=dtype),
        C=torch.randn(batch, length, n, generator=g, dtype=dtype),
        D=torch.randn(d, generator=g, dtype=dtype),
        delta_bias=0.1 * torch.randn(d, generator=g, dtype=dtype),
    )


def _reference_layout(batch=2, k=2, d=3, length=37, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, k * d, length, generator=g),
        delta=torch.randn(batch, k * d, length, generator=g),
        A=-torch.rand(k * d, n, generator=g) - 0.05,
        B=torch.randn(batch, k, n, length, generator=g),
        C=torch.randn(batch, k, n, length, generator=g),
        D=torch.randn(k * d, generator=g),
        delta_bias=0.1 * torch.randn(k * d, generator=g),
    )


# ------------------------------------------------------- the model's scan and its twin
@pytest.mark.parametrize('length', [1, 2, 17, 37, 256, 1025])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('n', [1, 2])
@pytest.mark.parametrize('backend', ['torch', 'export'])
def test_scan_equals_its_twin(length, reverse, n, backend):
    """Values and gradients of every input, both directions, both fast forms."""
    inputs = _tokens(length=length, n=n, seed=length)
    assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend=backend),
                 scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse))


def _grouped_tokens(groups=2, batch=2, length=23, d=6, n=1, seed=3):
    """Token-major inputs whose B/C have one projection per group of D / G channels."""
    inputs = _tokens(batch=batch, length=length, d=d, n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    inputs['B'] = torch.randn(batch, length, groups, n, generator=g)
    inputs['C'] = torch.randn(batch, length, groups, n, generator=g)
    return inputs


@pytest.mark.parametrize('length', [1, 23, 300])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('n', [1, 2])
@pytest.mark.parametrize('backend', ['torch', 'export'])
def test_grouped_projections_equal_the_twin(length, reverse, n, backend):
    """B/C per channel group (several directions in one scan): values and gradients."""
    inputs = _grouped_tokens(length=length, n=n)
    assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend=backend),
                     scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse))
    with torch.no_grad():  # the inference path (in place) too
        torch.testing.assert_close(
            selective_scan_channels_last(**inputs, reverse=reverse, backend=backend),
            selective_scan_channels_last_reference(**inputs, reverse=reverse), atol=1e-5, rtol=1e-4)


def test_groups_are_independent_scans_of_their_channels():
    """The twin's definition of groups: group g's channels scanned alone with B[:, :, g]."""
    inputs = _grouped_tokens(groups=3, d=6, n=2)
    with torch.no_grad():
        whole = selective_scan_channels_last_reference(**inputs)
        for g in range(3):
            part = slice(2 * g, 2 * g + 2)
            alone = selective_scan_channels_last_reference(
                inputs['u'][..., part], inputs['delta'][..., part], inputs['A'][part],
                inputs['B'][:, :, g], inputs['C'][:, :, g], inputs['D'][part],
                inputs['delta_bias'][part])
            torch.testing.assert_close(whole[..., part], alone, atol=1e-6, rtol=1e-6)


def test_groups_must_divide_the_channels():
    inputs = _grouped_tokens(groups=4, d=6)
    for fn in (selective_scan_channels_last, selective_scan_channels_last_reference):
        with pytest.raises(ValueError, match='G dividing D'):
            fn(**inputs)
        with pytest.raises(ValueError, match='C must be shaped as B'):
            fn(**dict(_grouped_tokens(), C=_tokens(length=23)['C']))


def test_reverse_is_the_scan_of_the_flipped_sequence():
    inputs = _tokens(length=40)
    flipped = {k: (v.flip(1) if v.dim() == 3 else v) for k, v in inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(
            selective_scan_channels_last_reference(**inputs, reverse=True),
            selective_scan_channels_last_reference(**flipped).flip(1))


def test_scan_equals_its_twin_at_4096():
    inputs = _tokens(batch=1, length=4096, d=4, delta_scale=2.0)
    for reverse in (False, True):
        with torch.no_grad():
            torch.testing.assert_close(
                selective_scan_channels_last(**inputs, reverse=reverse),
                selective_scan_channels_last_reference(**inputs, reverse=reverse),
                atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_scan_grads_equal_its_twin_at_4096():
    inputs = _tokens(batch=1, length=4096, d=2)
    for reverse in (False, True):
        assert_same_scan(scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse),
                     scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse))


@pytest.mark.parametrize('delta_scale', [1e-6, 30.0, 1e4])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('backend', ['torch'])  # 'export': tests/ops/test_scan_chunked.py
def test_extreme_deltas_equal_the_twin_and_stay_finite(delta_scale, reverse, backend):
    inputs = _tokens(length=300, delta_scale=delta_scale)
    fast = scan_and_grads(selective_scan_channels_last, inputs, reverse=reverse, backend=backend)
    twin = scan_and_grads(selective_scan_channels_last_reference, inputs, reverse=reverse)
    for out, grads in (fast, twin):
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(g).all() for g in grads.values())
    assert_same_scan(fast, twin, atol=1e-3, grad_atol=1e-2)


def test_long_sequence_tail_equals_the_twin():
    """L = 65536: the last steps equal the twin run over the last 2048 tokens (a decaying
    state forgets 2000+ steps back)."""
    inputs = _tokens(batch=1, length=65536, d=2, delta_scale=3.0)
    with torch.no_grad():
        out = selective_scan_channels_last(**inputs)
        tail = selective_scan_channels_last_reference(
            **{k: (v[:, -2048:] if v.dim() == 3 else v) for k, v in inputs.items()})
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, -64:], tail[:, -64:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('delta_scale', [1e-6, 1e4])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('backend', ['torch', 'export'])
def test_long_sequence_with_extreme_deltas_is_finite(delta_scale, reverse, backend):
    inputs = _tokens(batch=1, length=65536, d=2, delta_scale=delta_scale)
    with torch.no_grad():
        assert torch.isfinite(selective_scan_channels_last(**inputs, reverse=reverse,
                                                           backend=backend)).all()


def test_inference_path_equals_autograd_path():
    inputs = _tokens(batch=1, length=300, d=8)
    with torch.no_grad():
        fast = selective_scan_channels_last(**inputs, reverse=True)
    tracked, _ = scan_and_grads(selective_scan_channels_last, inputs, reverse=True)
    torch.testing.assert_close(fast, tracked, atol=0, rtol=0)


def test_half_inputs_compute_in_float32():
    inputs = _tokens(length=50)
    half = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan_channels_last(**half)
    assert out.dtype == torch.bfloat16
    ref = selective_scan_channels_last_reference(**{k: v.float() for k, v in half.items()})
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_reference_backend_is_the_twin():
    inputs = _tokens(length=20)
    with torch.no_grad():
        torch.testing.assert_close(
            selective_scan_channels_last(**inputs, reverse=True, backend='reference'),
            selective_scan_channels_last_reference(**inputs, reverse=True), atol=0, rtol=0)


def test_token_layout_errors_name_the_argument():
    inputs = _tokens(batch=1, length=10, d=4)
    for fn in (selective_scan_channels_last, selective_scan_channels_last_reference):
        with pytest.raises(ValueError, match='A must be'):
            fn(**dict(inputs, A=inputs['A'][:2]))
        with pytest.raises(ValueError, match='B must be'):
            fn(**dict(inputs, B=inputs['B'][:, :-1]))
    with pytest.raises(ValueError, match='backend'):
        selective_scan_channels_last(**inputs, backend='cuda')


# --------------------------------------------------------------- the reference layout
def test_matches_reference_fixture():
    fx = torch.load(DATA / 'selective_scan_parity.pt')
    for fn in (selective_scan, selective_scan_reference):
        out, grads = scan_and_grads(fn, fx['inputs'])
        torch.testing.assert_close(out, fx['output'], atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, fx['grads'][name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('length,n', [(1, 1), (33, 2), (300, 1)])
def test_reference_layout_equals_its_twin(length, n):
    inputs = _reference_layout(length=length, n=n)
    assert_same_scan(scan_and_grads(selective_scan, inputs), scan_and_grads(selective_scan_reference, inputs))


def test_bad_layout_and_backend_raise():
    inputs = _reference_layout()
    with pytest.raises(ValueError, match='backend'):
        selective_scan(**inputs, backend='tpu')
    with pytest.raises(ValueError, match='A must be'):
        selective_scan(**dict(inputs, A=inputs['A'][:3]))
    with pytest.raises(ValueError, match='B must be'):
        selective_scan(**dict(inputs, B=inputs['B'][..., :-1]))


def test_cuda_backend_without_kernel_is_a_clear_error():
    with pytest.raises(RuntimeError, match='mamba_ssm'):
        selective_scan(**_reference_layout(), backend='cuda')


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_torch_backend_on_cuda_matches_cpu():
    inputs = _tokens(length=777)
    for reverse in (False, True):
        out = selective_scan_channels_last(**{k: v.cuda() for k, v in inputs.items()},
                                           reverse=reverse, backend='torch')
        torch.testing.assert_close(out.cpu(), selective_scan_channels_last(**inputs, reverse=reverse),
                                   atol=1e-5, rtol=1e-4)


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
