"""The launch budget, checked without a GPU: the kernels one forward / training step of
MobileMamba-B1 launches on its CUDA code path (NCHW, every custom op on its Triton kernel,
counted in Triton's interpreter: the ATen ops inside the custom ops and every Triton launch;
see :mod:`mmmobilemamba.analysis.op_count`), against RegNetX-800MF's (same FLOPs), as
``tools/analysis/count_ops.py`` prints them. The implementation each custom-op call ran is
asserted: on the CUDA path, no call may run its PyTorch twin.

The 256x256 counts skip running the Triton kernels (``run_triton=False``: minutes in the
interpreter otherwise); :func:`test_counting_without_running_the_kernels_counts_the_same`
shows that this changes no count.
"""
import importlib
import warnings

import pytest
import torch
from tiny_models import TINY_ARCH

from mmmobilemamba.analysis.backbones import build_backbone
from mmmobilemamba.analysis.op_count import (count_forward, count_train_step,
                                             triton_interpreter)

pytest.importorskip('triton')
scan_module = importlib.import_module('mmmobilemamba.ops.selective_scan')
SIZE = 256  # B1's training resolution (the counts do not depend on it, but for odd sizes)
CUSTOM_OPS = ('mmmobilemamba::ss2d_scan', 'mmmobilemamba::haar_inverse_add',
              'mmmobilemamba::gated_layer_norm')


@pytest.fixture(scope='module', autouse=True)
def interpreter():
    with triton_interpreter():
        yield


@pytest.fixture(scope='module')
def regnet_counts():
    model = build_backbone('regnetx_800mf')
    x = torch.randn(2, 3, SIZE, SIZE)
    return dict(train=count_train_step(model, x).total,
                bf16=count_train_step(model, x, amp_dtype=torch.bfloat16))


def _b1(**kwargs):
    """B1 on the CUDA code path: NCHW, every custom op on its Triton kernel."""
    return build_backbone('b1', channels_last=False, scan_backend='triton', **kwargs)


def _assert_all_triton(counts):
    """Every custom-op call ran its Triton kernel (none its PyTorch twin)."""
    assert counts.custom_ops, 'no custom op ran'
    twins = {name: n for (name, impl), n in counts.custom_ops.items() if impl != 'triton'}
    assert not twins, f'custom ops that ran their PyTorch twin: {twins}'


@pytest.mark.parametrize('batch', [1, 8])
def test_cuda_form_of_b1_launches_at_most_250_kernels_per_eval_forward(batch):
    model = _b1().switch_to_deploy(device='cuda')
    counts = count_forward(model, torch.randn(batch, 3, SIZE, SIZE), run_triton=False)
    assert counts.total <= 250, counts.summary(top=15)
    _assert_all_triton(counts)
    # the scan, the wavelet inverse and SS2D's norm x gate are one op (one kernel) per block
    for op in CUSTOM_OPS:
        assert counts.implementations(op) == {'triton': 7}, op
    assert counts.syncs == 0


@pytest.mark.parametrize('batch', [1, 8])
def test_b1_training_step_within_2x_regnetx(batch, regnet_counts):
    counts = count_train_step(_b1(), torch.randn(batch, 3, SIZE, SIZE), run_triton=False)
    assert counts.total <= 2.0 * regnet_counts['train'], counts.summary(top=25)
    _assert_all_triton(counts)
    assert counts.implementations('mmmobilemamba::ss2d_scan_backward') == {'triton': 7}
    assert counts.syncs == 0


def test_bf16_training_step_casts_no_more_than_autocast_itself(regnet_counts):
    """Autocast casts each conv's weight down and its gradient back (RegNetX: ~2.2 casts per
    conv); B1 casts no more per conv: the kernels read bfloat16 as it is and write each
    result in its dtype, the residual depthwise convs take their folded weights in
    bfloat16, the float32 scales never promote the activations."""
    counts = count_train_step(_b1(), torch.randn(2, 3, SIZE, SIZE), amp_dtype=torch.bfloat16,
                              run_triton=False)
    _assert_all_triton(counts)
    regnet = regnet_counts['bf16']
    per_conv = counts.casts / counts.by_op['aten::convolution']
    regnet_per_conv = regnet.casts / regnet.by_op['aten::convolution']
    assert per_conv <= regnet_per_conv, (per_conv, regnet_per_conv, counts.summary(top=20))


@pytest.mark.slow
def test_counting_without_running_the_kernels_counts_the_same():
    """The budgets count Triton launches without running the kernels: the counts are the
    same as with the kernels run (no operator of the model depends on their values)."""
    from mmmobilemamba.models import MobileMamba
    torch.manual_seed(0)
    model = MobileMamba(TINY_ARCH, norm_eval=True, channels_last=False, scan_backend='triton')
    x = torch.randn(2, 3, 48, 64)
    run, dry = (count_train_step(model, x, run_triton=flag) for flag in (True, False))
    assert run.by_op == dry.by_op and run.custom_ops == dry.custom_ops
    assert run.cast_ops == dry.cast_ops and run.syncs == dry.syncs == 0
    _assert_all_triton(run)


def test_auto_on_cuda_runs_every_custom_op_on_triton(monkeypatch):
    """scan_backend 'auto' (the default) on CUDA with Triton there: every custom op of a
    training step takes its Triton kernel, asserted per call (the device resolution is
    pointed at CUDA; the kernels run in the interpreter)."""
    from mmmobilemamba.models import MobileMamba
    resolve = scan_module._auto_backend
    monkeypatch.setattr(scan_module, '_auto_backend',
                        lambda device_type, mamba_ssm: resolve('cuda', mamba_ssm))
    torch.manual_seed(0)
    model = MobileMamba(TINY_ARCH, norm_eval=True, channels_last=False)
    counts = count_train_step(model, torch.randn(2, 3, 64, 96), run_triton=False)
    _assert_all_triton(counts)
    for op in CUSTOM_OPS + ('mmmobilemamba::frozen_bn_act', 'mmmobilemamba::fold_frozen_bn'):
        assert counts.implementations(op), op


def test_auto_on_cuda_without_triton_warns_once(monkeypatch):
    """Without Triton, 'auto' on CUDA runs the twins but says so (once), never quietly."""
    monkeypatch.setattr(scan_module, '_triton_scan', lambda: None)
    monkeypatch.setattr(scan_module, '_mamba_ssm_scan', lambda: None)
    monkeypatch.setattr(scan_module, '_AUTO_CHOICES_LOGGED', set())
    cuda = torch.device('cuda')
    with pytest.warns(RuntimeWarning, match="Triton does not import.*scan_backend='torch'"):
        assert scan_module.custom_op_backend('auto', cuda) == 'torch'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once: not again
        assert scan_module.resolve_backend('auto', cuda, mamba_ssm=False) == 'torch'
    assert scan_module.custom_op_backend('triton', torch.device('cpu')) == 'triton'
    assert scan_module.custom_op_backend('reference', cuda) == 'torch'
