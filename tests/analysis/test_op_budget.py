"""The kernel budget, checked without a GPU: the operators one forward / training step of
MobileMamba-B1 dispatches (the CPU stand-in for its CUDA kernel launches: the model computes
NCHW as on CUDA, a custom op counts once), against RegNetX-800MF's (same FLOPs), as
``tools/analysis/count_ops.py`` prints them."""
import pytest
import torch

from mmmobilemamba.analysis.backbones import build_backbone
from mmmobilemamba.analysis.op_count import count_forward, count_train_step

SIZE = 256  # B1's training resolution; the counts do not depend on it


@pytest.fixture(scope='module')
def regnet_counts():
    model = build_backbone('regnetx_800mf')
    x = torch.randn(2, 3, SIZE, SIZE)
    return dict(train=count_train_step(model, x).total,
                bf16=count_train_step(model, x, amp_dtype=torch.bfloat16))


@pytest.mark.parametrize('batch', [1, 8])
def test_cuda_form_of_b1_runs_at_most_300_ops_per_eval_forward(batch):
    model = build_backbone('b1').switch_to_deploy(device='cuda')
    counts = count_forward(model, torch.randn(batch, 3, SIZE, SIZE))
    assert counts.total <= 300, counts.summary(top=15)
    # the scan, the wavelet inverse and SS2D's norm x gate are one op each per block
    for op in ('mmmobilemamba::ss2d_scan', 'mmmobilemamba::haar_inverse_add',
               'mmmobilemamba::gated_layer_norm'):
        assert counts.by_op[op] == 7, op
    assert counts.syncs == 0


@pytest.mark.parametrize('batch', [1, 8])
def test_b1_training_step_within_2_5x_regnetx(batch, regnet_counts):
    model = build_backbone('b1', channels_last=False)
    counts = count_train_step(model, torch.randn(batch, 3, SIZE, SIZE))
    assert counts.total <= 2.5 * regnet_counts['train'], counts.summary(top=20)
    assert counts.by_op['mmmobilemamba::ss2d_scan_backward'] == 7


def test_bf16_training_step_casts_no_more_than_autocast_itself(regnet_counts):
    """Autocast casts each conv's weight down and its gradient back (RegNetX: ~2.2 casts per
    conv); B1 casts no more per conv: the scan reads bfloat16 as it is and computes float32
    inside, its gradients come back in their inputs' dtypes, the float32 scales never promote
    the activations."""
    model = build_backbone('b1', channels_last=False)
    counts = count_train_step(model, torch.randn(2, 3, SIZE, SIZE), amp_dtype=torch.bfloat16)
    regnet = regnet_counts['bf16']
    per_conv = counts.casts / counts.by_op['aten::convolution']
    regnet_per_conv = regnet.casts / regnet.by_op['aten::convolution']
    assert per_conv <= 1.1 * regnet_per_conv, (per_conv, regnet_per_conv,
                                               counts.summary(top=20))
