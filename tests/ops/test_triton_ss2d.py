"""The Triton kernels of SS2D's scan and of the CUDA deploy form's fused layers, against their
PyTorch twins, on CPU through Triton's interpreter.

The tests run the kernels in Triton's interpreter (:func:`triton_checks.triton_interpreter`).
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads
from test_ss2d_scan import ARGS, check_scan_ops, ss2d_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from triton_checks import triton_interpreter

pytest.importorskip('triton')
from mmmobilemamba.ops import (inverse_wavelet_transform, ss2d_scan,  # noqa: E402
                              ss2d_scan_reference, wavelet_filters, wavelet_transform)
from mmmobilemamba.ops import scan_torch  # noqa: E402
from mmmobilemamba.ops.fused_ops import (gated_layer_norm, gated_layer_norm_torch,  # noqa: E402
                                         haar_inverse_add)
from mmmobilemamba.ops.scan_ops import ss2d_scan_backward_op  # noqa: E402


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


def triton_scan():
    """The kernel module as the interpreter reloaded it."""
    return importlib.import_module('mmmobilemamba.ops.triton_scan')


@pytest.mark.parametrize('length,n,d,dtype,channels_last', [
    (1, 1, 7, torch.float32, False),
    (6, 1, 40, torch.float32, True),     # d = 40: a block of 32 channels and a partial one
    (23, 2, 21, torch.float32, False),   # N = 2: blocks of 16 channels
    (45, 1, 33, torch.float32, False),   # two chunks by the plan (32 + 13 steps)
    (19, 1, 40, torch.bfloat16, True),
])
def test_ss2d_kernels_equal_the_twin(length, n, d, dtype, channels_last):
    """The op on the Triton kernels against the PyTorch twin and the sequential definition:
    each direction's output and every gradient (a weighted gradient per direction), and the
    summed output (its gradient expanded over the directions)."""
    inputs = ss2d_inputs(length, batch=2, d=d, n=n, seed=length, dtype=dtype,
                         channels_last=channels_last)
    # bfloat16 gradients: float32 results a rounding of bfloat16 apart at most
    tol = dict(grad_atol=1e-4) if dtype == torch.float32 else dict(grad_atol=1e-2,
                                                                       grad_rtol=8e-3)
    fast = scan_and_grads(ss2d_scan, inputs, backend='triton', sum_directions=False)
    assert all(fast[1][k].dtype == dtype for k in ('u', 'delta', 'B', 'C'))
    assert_same_scan(fast, scan_and_grads(ss2d_scan, inputs, backend='torch',
                                          sum_directions=False), **tol)
    reference = scan_and_grads(ss2d_scan_reference, inputs, sum_directions=False)
    if dtype == torch.float32:
        assert_same_scan(fast, reference)
    else:  # the definition rounds each direction's output, and so its gradient, to bfloat16
        torch.testing.assert_close(fast[0], reference[0], atol=1e-2, rtol=8e-3)
    assert_same_scan(scan_and_grads(ss2d_scan, inputs, backend='triton'),
                     scan_and_grads(ss2d_scan, inputs, backend='torch'), **tol)


def _kernel_and_twin(args, grad_y, chunk_len):
    """Forward and backward of the Triton module (chunking forced) and of the twin."""
    fast = (triton_scan().ss2d_scan_forward(*args, chunk_len=chunk_len),
            triton_scan().ss2d_scan_backward(grad_y, *args, chunk_len=chunk_len))
    twin = (scan_torch.ss2d_scan_forward_torch(*args),
            scan_torch.ss2d_scan_backward_torch(grad_y, *args))
    return fast, twin


@pytest.mark.parametrize('length,chunk_len,n,d,dtype', [
    (23, 5, 1, 40, torch.float32),    # 5 chunks of one tile, the last of 3 steps
    (23, 8, 2, 21, torch.float32),
    (40, 40, 1, 9, torch.float32),    # one chunk of two tiles (32 + 8 steps)
    (70, 64, 1, 33, torch.float32),   # chunks of two tiles, the last of 6 steps
    (23, 5, 1, 40, torch.bfloat16),
])
def test_forced_chunks_equal_the_twin(length, chunk_len, n, d, dtype):
    """Several chunks at small L (a ragged last one): the carries of the states and of the
    adjoint between chunks and tiles; gradients in the inputs' dtypes and layouts."""
    inputs = ss2d_inputs(length, batch=2, d=d, n=n, seed=length + n, dtype=dtype)
    args = [inputs[k] for k in ARGS]
    grad_y = torch.randn(2, 2, length, d, generator=torch.Generator().manual_seed(9))
    plan = triton_scan().ss2d_plan(2, 2, d, length, n, chunk_len=chunk_len)
    assert plan.num_chunks == -(-length // chunk_len)
    (y, grads), (y_twin, grads_twin) = _kernel_and_twin(args, grad_y, chunk_len)
    assert y.shape == (2, 2, length, d) and y.is_contiguous() and y.dtype == torch.float32
    torch.testing.assert_close(y, y_twin, atol=1e-5, rtol=1e-5)
    for name, grad, twin, like in zip(ARGS, grads, grads_twin, args):
        assert grad.dtype == like.dtype and grad.shape == like.shape, name
        assert grad.stride() == twin.stride(), name
        tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-2,
                                                                               rtol=8e-3)
        torch.testing.assert_close(grad, twin.to(like.dtype), **tol,
                                   msg=lambda m, name=name: f'{name}: {m}')


def test_gradient_expanded_over_the_directions_is_read_where_it_is():
    """A ``grad_y`` with stride 0 along K gives exactly what its materialised copy gives."""
    args = [ss2d_inputs(23, batch=2, d=20, seed=2)[k] for k in ARGS]
    grad = torch.randn(2, 1, 23, 20).expand(2, 2, 23, 20)
    kernels = triton_scan()
    for got, expected in zip(kernels.ss2d_scan_backward(grad, *args, chunk_len=8),
                             kernels.ss2d_scan_backward(grad.contiguous(), *args, chunk_len=8)):
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r'grad_y must be \(batch, K, L, d\)'):
        kernels.ss2d_scan_backward(grad[:, :, 1:], *args)


def test_runs_are_bitwise_equal_and_deterministic_mode_runs():
    """No atomics: two runs give the same bits, also under
    ``torch.use_deterministic_algorithms(True)`` (which fills each ``torch.empty`` with NaN:
    an output element no kernel writes would show)."""
    args = [ss2d_inputs(23, batch=1, d=20, n=2, seed=6)[k] for k in ARGS]
    grad_y = torch.randn(1, 2, 23, 20)
    kernels = triton_scan()

    def run():
        return (kernels.ss2d_scan_forward(*args, chunk_len=8),
                *kernels.ss2d_scan_backward(grad_y, *args, chunk_len=8))

    first = run()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = run()
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b, c in zip(first, run(), deterministic):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize('delta_scale', [1e-6, 30.0, 1e4])
def test_ss2d_kernel_extreme_deltas(delta_scale):
    inputs = ss2d_inputs(12)
    inputs['delta'] = inputs['delta'] * delta_scale
    fast = scan_and_grads(ss2d_scan, inputs, backend='triton')
    assert torch.isfinite(fast[0]).all() and all(torch.isfinite(g).all()
                                                 for g in fast[1].values())
    assert_same_scan(fast, scan_and_grads(ss2d_scan_reference, inputs), atol=1e-3,
                     grad_atol=1e-2)


class _Launches(TorchDispatchMode):
    """Kernel launches of the scan module, and the ATen operators run outside them (the
    interpreter's own copies happen inside a launch)."""

    def __init__(self, monkeypatch, module):
        super().__init__()
        self.kernels, self.aten, self.inside = [], [], False
        for name in dir(module):
            if name.startswith('_') and name.endswith('_kernel'):
                monkeypatch.setattr(module, name, self._counted(name, getattr(module, name)))

    def _counted(self, name, kernel):
        mode = self

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    mode.kernels.append(name)
                    mode.inside = True
                    try:
                        return kernel[grid](*args, **kwargs)
                    finally:
                        mode.inside = False
                return launch

        return Launcher()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.aten.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    def take(self):
        """The launches and operators recorded since the last call."""
        taken = self.kernels, self.aten
        self.kernels, self.aten = [], []
        return taken


@pytest.mark.parametrize('length,chunk_len', [(9, None), (45, None), (40, 40)])
def test_only_kernel_launches_and_allocations(monkeypatch, length, chunk_len):
    """Forward: one launch (two when chunked); backward: at most three; besides them only
    ``torch.empty`` and views (no fills, copies or casts), and the op's cast to the inputs'
    dtypes is no op."""
    inputs = ss2d_inputs(length, batch=2, d=40, dtype=torch.bfloat16, channels_last=True)
    args = [inputs[k] for k in ARGS]
    grad_y = torch.randn(2, 2, length, 40).expand(2, 2, length, 40)
    kernels = triton_scan()
    plan = kernels.ss2d_plan(2, 2, 40, length, 1, chunk_len=chunk_len)
    allowed = {'aten::empty', 'aten::split_with_sizes', 'aten::transpose'}
    recorder = _Launches(monkeypatch, kernels)
    with recorder:
        kernels.ss2d_scan_forward(*args, chunk_len=chunk_len)
    forward, forward_aten = recorder.take()
    with recorder:
        kernels.ss2d_scan_backward(grad_y, *args, chunk_len=chunk_len)
    backward, backward_aten = recorder.take()
    assert len(forward) == plan.forward_launches <= 2, forward
    assert len(backward) == plan.backward_launches <= 3, backward
    assert set(forward_aten) | set(backward_aten) <= allowed, (forward_aten, backward_aten)
    if chunk_len is None:  # the custom op adds nothing either
        with recorder:
            ss2d_scan_backward_op(grad_y, *args, 'triton')
        op, op_aten = recorder.take()
        assert len(op) == plan.backward_launches, op
        assert set(op_aten) <= allowed | {'mmmobilemamba::ss2d_scan_backward'}, op_aten


def _b1_scan_shapes():
    """(inner channels, L at 512x512) of each SS2D of MobileMamba-B1, from a 128x128 forward."""
    from mmmobilemamba.models import MobileMamba
    from mmmobilemamba.models.layers import SS2D
    model, shapes = MobileMamba(arch='b1').eval(), []
    for module in model.modules():
        if isinstance(module, SS2D):
            module.register_forward_hook(lambda m, i, o: shapes.append(
                (m.inner_channels, o.shape[-2] * o.shape[-1] * 16, m.d_state)))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    return sorted(set(shapes), key=lambda s: -s[1])


def test_b1_launch_geometry_fills_an_h100():
    """The plan for B1's three stages at 512x512 on 132 SMs: the first stage at batch 1 (320
    channels, 1024 tokens) splits into chunks to reach at least two programs per SM; at
    batch 16 the images and channel blocks alone do, in one chunk."""
    kernels = triton_scan()
    shapes = _b1_scan_shapes()
    assert [s[:2] for s in shapes] == [(320, 1024), (512, 256), (544, 64)]
    plans = {batch: [kernels.ss2d_plan(batch, 2, d, length, n) for d, length, n in shapes]
             for batch in (1, 16)}
    assert plans[1][0].programs >= 2 * 132, plans[1][0]
    assert [p.programs for p in plans[1]] == [320, 256, 68]
    assert [p.num_chunks for p in plans[16]] == [1, 1, 1]
    assert [p.programs for p in plans[16]] == [320, 512, 544]
    for plan in plans[1] + plans[16]:
        assert plan.forward_launches <= 2 and plan.backward_launches <= 3
    # the same shapes give the same chunks; the SM count of the device is respected
    assert kernels.ss2d_plan(1, 2, 320, 1024) == plans[1][0]
    assert kernels.ss2d_plan(1, 2, 320, 1024, sm_count=16).num_chunks < plans[1][0].num_chunks


def test_bad_plans_are_clear_errors():
    kernels = triton_scan()
    with pytest.raises(ValueError, match='chunk_len must be a positive number of steps'):
        kernels.ss2d_plan(1, 2, 8, 10, chunk_len=0)
    with pytest.raises(ValueError, match='must be positive'):
        kernels.ss2d_plan(1, 2, 0, 10)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_custom_ops_on_triton_pass_opcheck(dtype, channels_last):
    check_scan_ops('triton', dtype, channels_last)


@pytest.mark.parametrize('reverse', [False, True])
def test_recurrence_kernel_with_forced_chunks(reverse):
    """The token-major scan's recurrence, chunked at small L (a ragged last chunk)."""
    g = torch.Generator().manual_seed(int(reverse))
    a, b = torch.rand(3, 23, 40, generator=g), torch.randn(3, 23, 40, generator=g)
    expected = scan_torch.chunked_recurrence(a, b, reverse)
    for chunk_len in (5, 23):
        torch.testing.assert_close(triton_scan().recurrence(a, b, reverse, chunk_len=chunk_len),
                                   expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_long_scan_equals_the_twin():
    """L = 4096 (a 64x64 map): values and every gradient of the plan's chunked kernels."""
    inputs = ss2d_inputs(4096, batch=1, d=24, n=1, seed=11)
    fast = scan_and_grads(ss2d_scan, inputs, backend='triton', sum_directions=False)
    assert_same_scan(fast, scan_and_grads(ss2d_scan, inputs, backend='torch',
                                          sum_directions=False), atol=1e-4, grad_atol=1e-3)


def _haar_case(size, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    dec, rec = wavelet_filters(channels)
    bands = wavelet_transform(torch.randn(2, channels, h, w, generator=g), dec)
    bands = bands.reshape(2, 4 * channels, *bands.shape[-2:])
    bands = bands * torch.randn(1, 4 * channels, 1, 1, generator=g)  # not a plain round trip
    return dict(bands=bands, base=torch.randn(2, channels, h, w, generator=g), taps=rec,
                band_scale=torch.randn(4 * channels, generator=g),
                base_scale=torch.randn(channels, generator=g))


@pytest.mark.parametrize('size', [(6, 8), (7, 5), (1, 1)])
def test_haar_inverse_add_equals_the_inverse_transform(size):
    """Twin and kernel: ``base * s + IWT(bands * t)``, also without scales."""
    case = _haar_case(size)
    channels = case['base'].shape[1]
    bands = case['bands'] * case['band_scale'].view(1, -1, 1, 1)
    expected = case['base'] * case['base_scale'].view(1, -1, 1, 1) + inverse_wavelet_transform(
        bands.reshape(2, channels, 4, *bands.shape[-2:]), case['taps'], size)
    for backend in ('torch', 'triton'):
        torch.testing.assert_close(haar_inverse_add(**case, backend=backend), expected)
        plain = haar_inverse_add(case['bands'], case['base'], case['taps'], backend=backend)
        torch.testing.assert_close(plain, case['base'] + inverse_wavelet_transform(
            case['bands'].reshape(2, channels, 4, *bands.shape[-2:]), case['taps'], size))


def _gradients(fn, inputs, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()
              if k != 'taps'}
    out = fn(**leaves, **{k: v for k, v in inputs.items() if k == 'taps'}, **kwargs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize('size', [(6, 8), (7, 5)])
def test_haar_inverse_add_gradients(size):
    """Backward kernel and twin against autograd through the unfused transform."""
    case = _haar_case(size, seed=1)
    channels = case['base'].shape[1]

    def unfused(bands, base, taps, band_scale, base_scale):
        scaled = bands * band_scale.view(1, -1, 1, 1)
        return base * base_scale.view(1, -1, 1, 1) + inverse_wavelet_transform(
            scaled.reshape(2, channels, 4, *bands.shape[-2:]), taps, size)

    expected = _gradients(unfused, case)
    for backend in ('torch', 'triton'):
        out, grads = _gradients(haar_inverse_add, case, backend=backend)
        torch.testing.assert_close(out, expected[0])
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, name=name: f'{backend} {name}: {m}')


def _gated_case(channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, d, h, w = 2, 40, 3, 5
    z = torch.randn(b, 2 * d, h, w, generator=g)[:, d:]  # a channel slice, as SS2D's gate
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    return dict(y=torch.randn(b, h * w, d, generator=g), z=z,
                weight=torch.randn(d, generator=g), bias=torch.randn(d, generator=g))


def _gated_unfused(y, z, weight, bias):
    b, d, h, w = z.shape
    return (torch.nn.functional.layer_norm(y, (d,), weight, bias, 1e-5)
            .view(b, h, w, d).permute(0, 3, 1, 2) * torch.nn.functional.silu(z))


@pytest.mark.parametrize('channels_last', [False, True])
def test_gated_layer_norm_values_and_gradients(channels_last):
    case = _gated_case(channels_last)
    expected = _gradients(_gated_unfused, case)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    twin = gated_layer_norm_torch(**case, eps=1e-5)
    assert twin.is_contiguous(memory_format=layout)  # the gate's memory format
    torch.testing.assert_close(twin, expected[0])
    for backend in ('torch', 'triton'):
        out, grads = _gradients(gated_layer_norm, case, eps=1e-5, backend=backend)
        assert out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, expected[0], atol=1e-5, rtol=1e-5)
        for name, grad in expected[1].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-4,
                                       msg=lambda m, name=name: f'{backend} {name}: {m}')


_FAR_APART = '''
import torch
from test_ss2d_scan import ARGS, ss2d_inputs
from triton_checks import triton_interpreter
from mmmobilemamba.ops import scan_torch
with triton_interpreter():
    from mmmobilemamba.ops import triton_scan
    inputs = ss2d_inputs(9, batch=3, d=6, dtype=torch.bfloat16)
    # the images 2**30 elements apart: the third starts past 2**31 (never touched, never
    # resident: the memory is reserved only)
    u = torch.empty(2 * 2 ** 30 + 54, dtype=torch.bfloat16).as_strided((3, 6, 9), (2 ** 30, 9, 1))
    u.copy_(inputs['u'])
    args = [u] + [inputs[k] for k in ARGS[1:]]
    torch.testing.assert_close(triton_scan.ss2d_scan_forward(*args),
                               scan_torch.ss2d_scan_forward_torch(inputs['u'], *args[1:]))
    grad_y = torch.randn(3, 2, 9, 6)
    for got, expected in zip(triton_scan.ss2d_scan_backward(grad_y, *args),
                             scan_torch.ss2d_scan_backward_torch(grad_y, inputs['u'], *args[1:])):
        torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-2, rtol=8e-3)
print('equal')
'''


@pytest.mark.slow
def test_offsets_past_two_to_the_31():
    """64-bit offsets: an input whose images lie 2**30 elements apart. In a process of its own:
    32-bit offsets would wrap and the interpreter read outside the memory (a crash)."""
    tests = Path(__file__).parents[1]
    path = os.pathsep.join(str(p) for p in (tests, tests / 'ops', tests.parent))
    done = subprocess.run([sys.executable, '-c', _FAR_APART], capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': path}, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith('equal'), \
        (done.returncode, done.stderr[-3000:])
