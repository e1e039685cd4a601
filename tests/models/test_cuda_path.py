"""The whole CUDA code path on a CPU: MobileMamba with ``scan_backend='triton'`` runs every
custom op on its Triton kernel (in Triton's interpreter here) and equals the same model on the
PyTorch twins, in the CUDA deploy form (eval) and undeployed (a training step: forward,
backward, optimizer step), float32 and bfloat16 autocast, even and odd input sizes. Which
implementation each custom-op call ran is asserted from the launch counter's record.

The tiny model runs in the default suite; B1 and T2 (minutes in the interpreter) are slow.
"""
import contextlib

import pytest
import torch
from cuda_checks import assert_all_close_rel, trained_like
from tiny_models import TINY_ARCH
from triton_checks import triton_interpreter

pytest.importorskip('triton')
from mmmobilemamba.analysis.op_count import OpCounter  # noqa: E402
from mmmobilemamba.models import MobileMamba  # noqa: E402

# every custom op the CUDA path runs (eval: the forward ones)
TRAINING_OPS = {'mmmobilemamba::ss2d_scan', 'mmmobilemamba::ss2d_scan_backward',
                'mmmobilemamba::gated_layer_norm', 'mmmobilemamba::gated_layer_norm_backward',
                'mmmobilemamba::haar_inverse_add', 'mmmobilemamba::haar_inverse_add_backward',
                'mmmobilemamba::frozen_bn_act', 'mmmobilemamba::frozen_bn_act_backward',
                'mmmobilemamba::fold_frozen_bn', 'mmmobilemamba::fold_frozen_bn_backward'}
EVAL_OPS = {'mmmobilemamba::ss2d_scan', 'mmmobilemamba::gated_layer_norm',
            'mmmobilemamba::haar_inverse_add'}
SIZES = {'even': (64, 96), 'odd': (48, 80)}  # maps 4x6, 2x3, 1x2 / 3x5, 2x3, 1x2
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


def _pair(arch, seed=0):
    """The same weights on the twins and on the kernels, NCHW (the CUDA layout), with frozen
    BatchNorm statistics (the detectors' ``norm_eval``) and drop path."""
    torch.manual_seed(seed)
    twin = trained_like(MobileMamba(arch, norm_eval=True, channels_last=False,
                                    scan_backend='torch', drop_path_rate=0.2))
    kernels = MobileMamba(arch, norm_eval=True, channels_last=False, scan_backend='triton',
                          drop_path_rate=0.2)
    kernels.load_state_dict(twin.state_dict())
    return twin, kernels


def _autocast(dtype):
    return torch.autocast('cpu', dtype=dtype) if dtype else contextlib.nullcontext()


def _weighted(outs):
    return sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)


def _train_step(model, x, dtype, seed=1):
    """One step: outputs, the input's and every parameter's gradient, the updated weights;
    and the launch record (which implementation each custom-op call ran)."""
    model.train()
    # a step of a training's size: at lr 0.01 this loss's gradients (~300) move B1's weights by
    # up to 3.5 and its eval forward after the step overflows, the twins' too
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    leaf = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same drop-path masks
    counter = OpCounter()
    with counter:
        with _autocast(dtype):
            outs = model(leaf)
        _weighted(outs).backward()
        optimizer.step()
    result = {f'out.{i}': o.detach() for i, o in enumerate(outs)}
    result['input.grad'] = leaf.grad
    result.update({f'{n}.grad': p.grad for n, p in model.named_parameters()
                   if p.grad is not None})
    result.update({f'{n}.after': p.detach() for n, p in model.named_parameters()})
    return result, counter.count


def _eval_deployed(model, x, dtype):
    model.switch_to_deploy(device='cuda')
    counter = OpCounter()
    with counter, torch.no_grad(), _autocast(dtype):
        outs = model(x)
    return {f'out.{i}': o for i, o in enumerate(outs)}, counter.count


def _relative_error(value, ref):
    ref = ref.float()
    return float((value.float() - ref).norm() / ref.norm().clamp_min(1e-12))


def _all_gradients(result):
    return torch.cat([v.float().flatten() for k, v in sorted(result.items())
                      if k.endswith('.grad')])


def _assert_same(actual, expected, exact=None, batch_statistics=False):
    """float32 (``exact`` None): every value to 1e-4 of the tensor's largest. With batch
    statistics, which amplify rounding (a BatchNorm over 4 values per channel), gradients to
    1e-3 of the largest gradient, updated weights not compared (their change is the
    gradients'). bfloat16 autocast, rounded in other places by the twins and by the kernels
    (some gradients of a small batch differ from float32's by 10-30% either way), and
    truncated where Triton's interpreter stores bfloat16 (a GPU rounds to nearest): the
    kernels' results as close to the float32 ones ``exact`` as the twins' (relative L2 error
    at most twice theirs plus 3%, for each output and for all gradients together)."""
    assert actual.keys() == expected.keys(), set(actual) ^ set(expected)
    if exact is not None or batch_statistics:  # updated weights: the gradients' change
        actual = {k: v for k, v in actual.items() if not k.endswith('.after')}
        expected = {k: v for k, v in expected.items() if not k.endswith('.after')}
        exact = exact and {k: v for k, v in exact.items() if not k.endswith('.after')}
    if exact is None:
        grads = [k for k in expected if k.endswith('.grad')] if batch_statistics else []
        assert_all_close_rel({k: actual[k] for k in expected if k not in grads},
                             {k: expected[k] for k in expected if k not in grads})
        if grads:
            scale = float(_all_gradients(expected).abs().max())
            for key in grads:
                torch.testing.assert_close(actual[key], expected[key], rtol=1e-3,
                                           atol=1e-3 * scale, msg=lambda m, k=key: f'{k}: {m}')
        return
    assert exact.keys() == expected.keys()
    for key, ref in exact.items():
        if not key.endswith('.grad'):
            kernels, twins = (_relative_error(actual[key], ref),
                              _relative_error(expected[key], ref))
            assert kernels <= 2 * twins + 3e-2, (key, kernels, twins)
    if any(k.endswith('.grad') for k in exact):
        ref = _all_gradients(exact)
        kernels = _relative_error(_all_gradients(actual), ref)
        twins = _relative_error(_all_gradients(expected), ref)
        assert kernels <= 2 * twins + 3e-2, ('gradients', kernels, twins)


def _assert_ran(count, ops, impl):
    ran = {name for name, _ in count.custom_ops}
    assert ops <= ran, ops - ran
    wrong = {key: n for key, n in count.custom_ops.items() if key[1] != impl}
    assert not wrong, f'custom ops that did not run {impl}: {wrong}'


def _assert_well_conditioned(arch, x):
    """The twins' own gradients move by less than the comparison's tolerance when the input
    moves by 1e-6 of itself: no ReLU sits within rounding of its kink there. (At another
    image T2's gradients moved by 5% under a 1e-7 change, kernels and twins alike, since a
    squeeze-excite ReLU of one pooled value flipped; comparing there tests nothing.)"""
    nudged = x * (1 + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9)))
    steps = [_train_step(_pair(arch)[0], image, None)[0] for image in (x, nudged)]
    grads = [k for k in steps[0] if k.endswith('.grad')]
    assert_all_close_rel({k: steps[1][k] for k in grads}, {k: steps[0][k] for k in grads})


def _check_cuda_path(arch, size, precision):
    dtype = PRECISIONS[precision]
    x = torch.randn(2, 3, *SIZES[size], generator=torch.Generator().manual_seed(3))
    if dtype is None:
        _assert_well_conditioned(arch, x)
    twin, kernels = _pair(arch)
    exact = _train_step(_pair(arch)[0], x, None)[0] if dtype else None
    expected, twin_count = _train_step(twin, x, dtype)
    actual, count = _train_step(kernels, x, dtype)
    _assert_ran(count, TRAINING_OPS, 'triton')
    _assert_ran(twin_count, {'mmmobilemamba::ss2d_scan'}, 'torch')
    _assert_same(actual, expected, exact)
    twin_fp32 = _pair(arch)[0]
    twin_fp32.load_state_dict(twin.state_dict())  # the weights after the step
    exact = _eval_deployed(twin_fp32, x, None)[0] if dtype else None
    expected, _ = _eval_deployed(twin, x, dtype)
    actual, count = _eval_deployed(kernels, x, dtype)
    _assert_ran(count, EVAL_OPS, 'triton')
    _assert_same(actual, expected, exact)


@pytest.mark.parametrize('size,precision', [
    ('even', 'fp32'), ('odd', 'bf16'),  # ~20 s each in the interpreter; the other two slow
    pytest.param('even', 'bf16', marks=pytest.mark.slow),
    pytest.param('odd', 'fp32', marks=pytest.mark.slow)])
def test_tiny_model_on_the_kernels_equals_the_twins(size, precision):
    _check_cuda_path(TINY_ARCH, size, precision)


@pytest.mark.slow
@pytest.mark.parametrize('precision', sorted(PRECISIONS))
@pytest.mark.parametrize('size', sorted(SIZES))
@pytest.mark.parametrize('arch', ['b1', 't2'])
def test_released_models_on_the_kernels_equal_the_twins(arch, size, precision):
    _check_cuda_path(arch, size, precision)


@pytest.mark.parametrize('precision', sorted(PRECISIONS))
def test_channels_last_cuda_form_on_the_kernels_equals_the_twins(precision):
    """The CUDA deploy form computing channels-last (the layout cuDNN's tensor-core convs
    want; ``CUDA_FORM_CHANNELS_LAST`` picks it): the fused scan, norm and inverse read and
    write NHWC maps where they are."""
    dtype = PRECISIONS[precision]
    twin, kernels = _pair(TINY_ARCH)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    exact = _eval_deployed(_pair(TINY_ARCH)[0], x, None)[0] if dtype else None
    for model in (twin, kernels):
        model.channels_last = True
    expected, _ = _eval_deployed(twin, x, dtype)
    actual, count = _eval_deployed(kernels, x, dtype)
    _assert_ran(count, EVAL_OPS, 'triton')
    _assert_same(actual, expected, exact)


def test_batch_statistics_training_on_the_kernels_equals_the_twins():
    """BatchNorm with batch statistics (not frozen): the norms run as they are, the scan,
    gated norm and inverse transform on their kernels."""
    twin, kernels = _pair(TINY_ARCH)
    for model in (twin, kernels):
        model.norm_eval = False
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    expected, _ = _train_step(twin, x, None)
    actual, count = _train_step(kernels, x, None)
    _assert_ran(count, EVAL_OPS | {'mmmobilemamba::ss2d_scan_backward'}, 'triton')
    frozen = {'mmmobilemamba::frozen_bn_act', 'mmmobilemamba::fold_frozen_bn'}
    assert not frozen & {name for name, _ in count.custom_ops}
    _assert_same(actual, expected, batch_statistics=True)
