"""SS2D's two-direction scan op (``ss2d_scan``): the PyTorch backend against the sequential twin,
values and gradients, in the layouts SS2D passes; the custom ops' registrations (opcheck)."""
import pytest
import torch
from scan_checks import assert_same_scan, scan_and_grads

from mmmobilemamba.ops import scan_torch, ss2d_scan, ss2d_scan_reference
from mmmobilemamba.ops.scan_ops import linear_recurrence, ss2d_scan_backward_op, ss2d_scan_op

ARGS = ('u', 'delta', 'A_log', 'B', 'C', 'D', 'delta_bias')


def ss2d_inputs(length, batch=2, d=6, n=1, directions=2, seed=0, dtype=torch.float32,
                channels_last=False):
    """Inputs as SS2D makes them: u a (B, d, L) view of a map, B/C slices of one projection."""
    g = torch.Generator().manual_seed(seed)
    k = directions
    u = torch.randn(batch, length, d, generator=g).transpose(1, 2) if channels_last \
        else torch.randn(batch, d, length, generator=g)
    proj = torch.randn(batch, k, 3 + 2 * n, length, generator=g)
    return dict(u=u.to(dtype), delta=torch.randn(batch, k, d, length, generator=g).to(dtype),
                A_log=0.5 * torch.randn(k * d, n, generator=g), B=proj[:, :, 3:3 + n].to(dtype),
                C=proj[:, :, 3 + n:].to(dtype), D=torch.randn(k * d, generator=g),
                delta_bias=0.1 * torch.randn(k * d, generator=g))


@pytest.mark.parametrize('length', [1, 2, 17, 300])
@pytest.mark.parametrize('n', [1, 2])
def test_torch_backend_equals_the_twin(length, n):
    inputs = ss2d_inputs(length, n=n, seed=length + n)
    assert_same_scan(scan_and_grads(ss2d_scan, inputs, backend='torch'),
                     scan_and_grads(ss2d_scan_reference, inputs))


@pytest.mark.parametrize('directions', [1, 2])
def test_channels_last_views_and_one_direction(directions):
    inputs = ss2d_inputs(23, directions=directions, channels_last=True)
    assert not inputs['u'].is_contiguous()
    assert_same_scan(scan_and_grads(ss2d_scan, inputs, backend='torch'),
                     scan_and_grads(ss2d_scan_reference, inputs))


def test_second_direction_is_the_flipped_scan_flipped_back():
    """Direction 1 equals the authors' form: the forward scan of the flipped sequence."""
    inputs = ss2d_inputs(19)
    both = ss2d_scan(**inputs, backend='torch')
    one = {k: v[:, :1] if k in ('delta', 'B', 'C') else v[:6] if k in ('A_log', 'D', 'delta_bias')
           else v for k, v in inputs.items()}
    flipped = {k: (v[:, 1:].flip(-1) if k in ('delta', 'B', 'C') else v[6:] if k in
                   ('A_log', 'D', 'delta_bias') else v.flip(-1)) for k, v in inputs.items()}
    expected = ss2d_scan(**one, backend='torch') + ss2d_scan(**flipped, backend='torch').flip(1)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_inputs_are_read_as_they_are_and_scanned_in_float32():
    inputs = ss2d_inputs(29, dtype=torch.bfloat16)
    out = ss2d_scan(**inputs, backend='torch')
    assert out.dtype == torch.float32
    exact = ss2d_scan(**{k: v.float() for k, v in inputs.items()}, backend='torch')
    torch.testing.assert_close(out, exact, atol=0, rtol=0)
    grads = scan_and_grads(ss2d_scan, inputs, backend='torch')[1]
    assert grads['u'].dtype == grads['B'].dtype == torch.bfloat16


def test_under_autocast_the_scan_stays_float32():
    inputs = ss2d_inputs(12)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ss2d_scan(**inputs, backend='torch')
    torch.testing.assert_close(out, ss2d_scan(**inputs, backend='torch'), atol=0, rtol=0)


def test_bad_layouts_and_backends_are_clear_errors():
    inputs = ss2d_inputs(5)
    with pytest.raises(ValueError, match=r'delta must be \(batch, K, d, L\)'):
        ss2d_scan(**{**inputs, 'delta': inputs['delta'][:, :, :, :4]})
    with pytest.raises(ValueError, match=r'B must be \(batch, K, N, L\)'):
        ss2d_scan(**{**inputs, 'B': inputs['B'][:, :, :, :4]})
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ss2d_scan(**inputs, backend='cuda')


@pytest.mark.parametrize('length', [1, 23])
def test_per_direction_outputs(length):
    """``sum_directions=False``: the op's (batch, K, L, d) float32 contiguous result, each
    direction with its own skip term, equal to the sequential twin's; True sums them."""
    inputs = ss2d_inputs(length, n=2, seed=3)
    per_direction = scan_and_grads(ss2d_scan, inputs, backend='torch', sum_directions=False)
    y = per_direction[0]
    assert y.shape == (2, 2, length, 6) and y.dtype == torch.float32 and y.is_contiguous()
    assert_same_scan(per_direction,
                     scan_and_grads(ss2d_scan_reference, inputs, sum_directions=False))
    torch.testing.assert_close(ss2d_scan(**inputs, backend='torch'), y.sum(1), atol=0, rtol=0)


def test_twin_reads_a_gradient_expanded_over_the_directions():
    """``grad_y`` with stride 0 along K (one gradient of the summed directions) is read where it
    is and gives what the materialised gradient gives."""
    args = [ss2d_inputs(17, n=2, seed=4)[k] for k in ARGS]
    grad = torch.randn(2, 1, 17, 6).expand(2, 2, 17, 6)
    assert grad.stride(1) == 0
    for got, expected in zip(scan_torch.ss2d_scan_backward_torch(grad, *args),
                             scan_torch.ss2d_scan_backward_torch(grad.contiguous(), *args)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r'grad_y must be \(batch, K, L, d\)'):
        scan_torch.ss2d_scan_backward_torch(grad.sum(1), *args)


def test_scan_and_grads_weights_on_the_output_device():
    """The check's weight follows its output (it was made on the CPU: a CUDA output failed)."""
    out, grads = scan_and_grads(lambda x: 2 * x, {'x': torch.ones(3, device='meta')})
    assert out.device.type == grads['x'].device.type == 'meta'


def check_scan_ops(backend, dtype, channels_last):
    """``opcheck`` (schema, fakes with the real strides, autograd registration, the compiler's
    view) of the scan ops with inputs as SS2D passes them: ``ss2d_scan`` from an NCHW or a
    channels-last map, its backward with a plain gradient and one expanded over the
    directions (what the op that sums them hands back), ``linear_recurrence`` as the
    token-major scan calls it."""
    inputs = ss2d_inputs(9, n=2, dtype=dtype, channels_last=channels_last)
    args = tuple(inputs[k].detach().clone().requires_grad_(k != 'delta_bias') for k in ARGS)
    torch.library.opcheck(ss2d_scan_op, args + (backend,))
    g = torch.Generator().manual_seed(1)
    for grad_y in (torch.randn(2, 2, 9, 6, generator=g),
                   torch.randn(2, 1, 9, 6, generator=g).expand(2, 2, 9, 6)):
        torch.library.opcheck(ss2d_scan_backward_op,
                              (grad_y,) + tuple(a.detach() for a in args) + (backend,))
    a = torch.rand(3, 20, 4, generator=g).to(dtype).requires_grad_(True)
    b = torch.randn(3, 20, 4, generator=g).to(dtype).requires_grad_(True)
    torch.library.opcheck(linear_recurrence, (a, b, True, backend))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_custom_op_registrations_pass_opcheck(dtype, channels_last):
    check_scan_ops('torch', dtype, channels_last)
