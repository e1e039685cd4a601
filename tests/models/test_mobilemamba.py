"""The MobileMamba backbone: shapes, training state, variants, fusion, registry builds."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from tiny_models import TINY_ARCH as TINY

from mmmobilemamba.models import ARCH_SETTINGS, MobileMamba

DATA = Path(__file__).parent.parent / 'data'


def _randomise_bn(model, seed=0):
    """Random BN statistics/affines so that no branch is an identity (zero-init BNs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model


@pytest.mark.parametrize('size', [(64, 64), (97, 130), (33, 45), (160, 224), (1, 1)])
def test_output_shapes_are_ceil_of_strides(size):
    model = MobileMamba(TINY).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    for out, stride, ch in zip(outs, (16, 32, 64), TINY['embed_dims']):
        assert out.shape == (1, ch, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_out_indices_select_stages():
    model = MobileMamba(TINY, out_indices=(1, 2)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 96]
    assert model.out_channels == [64, 96]
    assert [f['reduction'] for f in model.feature_info] == [16, 32, 64]


@pytest.mark.parametrize('bad', [(3,), (-1,), (0, 5), ()])
def test_bad_out_indices_raise(bad):
    with pytest.raises(ValueError, match='out_indices'):
        MobileMamba(TINY, out_indices=bad)


@pytest.mark.parametrize('arch', ['b3', 'tiny', 7])
def test_unknown_arch_lists_valid_names(arch):
    with pytest.raises(ValueError, match="'b1'"):
        MobileMamba(arch)


def test_malformed_arch_dict_raises():
    with pytest.raises(ValueError, match='missing keys'):
        MobileMamba(dict(embed_dims=(48, 64, 96)))
    with pytest.raises(ValueError, match='3 values'):
        MobileMamba(dict(TINY, depths=(1, 1)))
    with pytest.raises(ValueError, match='unknown keys'):
        MobileMamba(dict(TINY, width=3))


@pytest.mark.parametrize('arch,expected', [('t2', 8.44), ('t4', 13.69), ('s6', 14.55),
                                           ('b1', 16.62), ('b2', 16.62), ('b4', 16.62)])
def test_parameter_counts_match_release(arch, expected):
    n = sum(p.numel() for p in MobileMamba(arch).parameters()) / 1e6
    assert abs(n - expected) / expected < 0.01


@pytest.mark.parametrize('arch', ['T2', 'T4', 'S6', 'B1'])
def test_release_key_layout_maps_onto_every_variant(arch):
    from mmmobilemamba.models import convert_official_checkpoint
    keys = json.loads((DATA / 'official_state_dict_keys.json').read_text())[arch]
    converted = convert_official_checkpoint({k: torch.zeros(s) for k, s in keys.items()})
    own = MobileMamba(arch.lower()).state_dict()
    assert set(converted) == set(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)


def test_frozen_stages_stay_frozen_after_train():
    model = MobileMamba(TINY, frozen_stages=1)
    model.train()
    frozen = [model.patch_embed, model.stages[0], model.stages[1]]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert model.stages[2].training
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert model.patch_embed[0].conv.weight.grad is None


def test_frozen_stage_zero_freezes_stem_and_first_stage():
    model = MobileMamba(TINY, frozen_stages=0).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_bad_frozen_stages_raise():
    with pytest.raises(ValueError, match='frozen_stages'):
        MobileMamba(TINY, frozen_stages=3)


def test_norm_eval_keeps_bn_in_eval():
    model = MobileMamba(TINY, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(bns[0].running_mean, before)
    assert model.stages[2].training  # only the norms are in eval


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = _randomise_bn(MobileMamba(TINY, drop_path_rate=0.0))
    ckpt = MobileMamba(TINY, drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        sum(o.square().sum() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_drop_path_only_in_training():
    model = _randomise_bn(MobileMamba(TINY, drop_path_rate=0.5))
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x)[-1], model(x)[-1]
    torch.testing.assert_close(a, b)
    model.train()
    for m in model.modules():  # keep BN deterministic: only drop path may vary
        if isinstance(m, _BatchNorm):
            m.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        c, d = model(x)[-1], model(x)[-1]
    assert not torch.allclose(c, d)


def test_release_drop_path_defaults():
    rates = [m.drop_prob for m in MobileMamba('b1').modules() if hasattr(m, 'drop_prob')]
    assert max(rates) == pytest.approx(0.03)
    assert not any(hasattr(m, 'drop_prob') for m in MobileMamba('t2').modules())


@pytest.mark.parametrize('kernels,channels_last', [(None, None), (((3, 5, 7), (3, 5), (3,)), None),
                                                    (None, False)])
def test_deploy_fusion_matches_unfused(kernels, channels_last):
    model = _randomise_bn(MobileMamba(TINY, local_kernel_sizes=kernels,
                                      channels_last=channels_last)).eval()
    for m in model.modules():  # non-trivial learned scales
        if hasattr(m, 'ssm_scale'):
            m.ssm_scale.data.uniform_(0.5, 1.5)
            m.wavelet_scale.data.uniform_(0.05, 0.2)
    x = torch.randn(2, 3, 97, 130)
    with torch.no_grad():
        ref = model(x)
        model.switch_to_deploy()
        fused = model(x)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    for a, b in zip(ref, fused):
        assert ((a - b).abs().max() / b.abs().max()) < 1e-4


def test_multi_kernel_local_branch_splits_channels():
    model = MobileMamba(TINY, local_kernel_sizes=((3, 5, 7), (3, 5), (3,)))
    local = model.stages[0].blocks[0].mixer.local_branch
    assert [c.kernel_size[0] for c in local.dwconvs] == [3, 5, 7]
    assert sum(local.part_channels) == local.bn1.num_features
    model.eval()(torch.randn(1, 3, 64, 64))


def test_syncbn_norm_cfg_is_used():
    model = MobileMamba(TINY, norm_cfg=dict(type='SyncBN'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_release_variants_are_named():
    assert set(ARCH_SETTINGS) == {'t2', 't4', 's6', 'b1', 'b2', 'b4'}


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        MobileMamba(TINY)(torch.randn(1, 1, 64, 64))


def test_built_from_mmdet_and_mmseg_registries():
    import mmmobilemamba  # noqa: F401  registers
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for registry in (DET, SEG):
        model = registry.build(dict(type='MobileMamba', arch=TINY, out_indices=(0, 2)))
        assert isinstance(model, MobileMamba)


def test_mmdet_detector_config_builds_and_runs():
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config(dict(model=dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1]),
        backbone=dict(type='MobileMamba', arch=TINY),
        neck=dict(type='FPN', in_channels=[48, 64, 96], out_channels=32, num_outs=3),
        bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=1,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=1, ratios=[1.0],
                                             strides=[16, 32, 64]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                       loss_bbox=dict(type='L1Loss')))))
    model = MODELS.build(cfg.model).eval()
    feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [4, 2, 1]


def test_channels_last_is_an_internal_choice():
    """Same outputs and gradients in either memory format; outputs are NCHW-contiguous."""
    nchw = _randomise_bn(MobileMamba(TINY, channels_last=False)).train()
    nhwc = MobileMamba(TINY, channels_last=True).train()
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 3, 97, 130)
    outs = []
    for model in (nchw, nhwc):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        assert all(o.is_contiguous() for o in out)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        outs.append((out, xi.grad))
    (out_a, grad_a), (out_b, grad_b) = outs
    # equal up to float summation order (different conv kernels), relative to the scale
    for a, b in zip(list(out_a) + [grad_a], list(out_b) + [grad_b]):
        assert (a - b).abs().max() / a.abs().max() < 1e-3
    with pytest.raises(ValueError, match='channels_last'):
        MobileMamba(TINY, channels_last='yes')


def test_deployed_model_runs_every_conv_packed_on_cpu():
    """Every conv runs through oneDNN with packed weights, or as the plain op it is (1x1
    depthwise: a per-channel multiply-add; dense 1x1 on small maps, the squeeze-excite's
    included: one matrix product)."""
    from mmmobilemamba.models.layers import InferenceConv2d
    from mmmobilemamba.models.layers.inference_conv import _onednn_available
    if not _onednn_available():
        pytest.skip('needs oneDNN')
    model = MobileMamba(TINY).switch_to_deploy()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, InferenceConv2d)}
    assert convs and not any(type(m) is nn.Conv2d for m in model.modules())
    forms = {}

    def record_form(name):
        def hook(module, args):
            forms[name] = module._elementwise_form(args[0])
        return hook

    hooks = [conv.register_forward_pre_hook(record_form(name)) for name, conv in convs.items()]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    for hook in hooks:
        hook.remove()
    assert forms.keys() == convs.keys()
    for name, conv in convs.items():
        # at this size every dense 1x1 conv has fewer than 512 pixels: one matrix product
        expected = ('scale' if name.endswith('dw1x1') else
                    'matmul' if conv.kernel_size == (1, 1) else None)
        assert forms[name] == expected, name
        assert (conv._packed is None) == (expected == 'scale'), name  # prepared once
    # no stand-alone activation is left next to a conv it could run in
    assert not any(isinstance(m, nn.ReLU) for n, m in model.named_modules()
                   if not n.endswith('mixer.act') and 'se.' not in n)
