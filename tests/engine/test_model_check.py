"""Channel wiring checks and the load_from report for fine-tuning with other classes."""
from pathlib import Path

import pytest
import torch
from engine_toys import TINY_ARCH as TINY
from mmengine.config import Config

from mmmobilemamba.engine import check_model_channels, check_model_config, load_from_report

REPO = Path(__file__).resolve().parents[2]


def _retinanet(num_classes=3, in_channels=(48, 64, 96), arch=TINY, out_indices=(0, 1, 2)):
    return Config(dict(default_scope='mmdet', model=dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1]),
        backbone=dict(type='MobileMamba', arch=arch, out_indices=out_indices),
        neck=dict(type='MobileMambaFPN', in_channels=list(in_channels), out_channels=16,
                  num_deconv_levels=1, add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=num_classes, in_channels=16,
                       feat_channels=16, stacked_convs=1,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=1, ratios=[1.0],
                                             strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                       loss_bbox=dict(type='L1Loss')))))


def test_matching_channels_pass():
    assert check_model_channels(_retinanet()) == []


def test_neck_in_channels_mismatch_names_the_fix():
    problems = check_model_channels(_retinanet(in_channels=(200, 376, 448)))
    assert len(problems) == 1
    text = str(problems[0])
    assert 'model.neck.in_channels' in text and '[48, 64, 96]' in text and '[200, 376, 448]' in text


def test_out_indices_change_is_followed():
    problems = check_model_channels(_retinanet(out_indices=(1, 2)))
    assert 'gives [64, 96]' in str(problems[0])


@pytest.mark.parametrize('arch,match', [('b3', "unknown arch 'b3'"), (TINY, 'out_indices')])
def test_invalid_backbone_config_is_reported(arch, match):
    cfg = _retinanet(arch=arch, out_indices=(3,) if arch is TINY else (0, 1, 2))
    problems = check_model_channels(cfg)
    assert problems and match in str(problems[0])


def test_segmentor_head_without_neck_uses_in_index():
    cfg = Config(dict(model=dict(
        type='EncoderDecoder', backbone=dict(type='MobileMamba', arch='b1'),
        decode_head=dict(type='ASPPHead', in_channels=2048, in_index=2, num_classes=4),
        auxiliary_head=dict(type='FCNHead', in_channels=376, in_index=1, num_classes=4))))
    problems = check_model_channels(cfg)
    assert len(problems) == 1
    assert 'model.decode_head.in_channels=448' in str(problems[0])


def test_load_from_report_and_reinit_of_class_layers(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint
    import mmmobilemamba  # noqa: F401
    register_all_modules()
    source = MODELS.build(_retinanet(num_classes=80).model)
    path = tmp_path / 'coco.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    target = MODELS.build(_retinanet(num_classes=3).model)
    target.init_weights()
    init_cls = target.bbox_head.retina_cls.weight.detach().clone()
    lines = load_from_report(target, torch.load(path, weights_only=True))
    skipped = [ln for ln in lines if ln.startswith('skipped')]
    assert {ln.split(':')[0] for ln in skipped} == {
        'skipped bbox_head.retina_cls.weight', 'skipped bbox_head.retina_cls.bias'}
    assert all('num_classes differs' in ln for ln in skipped)
    load_checkpoint(target, str(path), strict=False)
    torch.testing.assert_close(target.bbox_head.retina_cls.weight, init_cls)
    torch.testing.assert_close(target.backbone.patch_embed[0].conv.weight,
                               source.backbone.patch_embed[0].conv.weight)


def test_train_entry_stops_on_channel_mismatch(tmp_path, capsys):
    """tools/train.py runs the check before building anything: exit 2, the fix in the message."""
    from mmmobilemamba.engine.launch import train_main
    cfg = _retinanet(in_channels=(200, 376, 448))
    cfg.custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)
    path = tmp_path / 'bad_neck.py'
    cfg.dump(str(path))
    assert train_main([str(path), '--work-dir', str(tmp_path / 'wd')]) == 2
    assert 'model.neck.in_channels=[48, 64, 96]' in capsys.readouterr().err


# ------------------------------------------------------------------------ check_model_config
def test_unknown_backbone_argument_names_the_closest_and_the_valid_ones():
    cfg = _retinanet()
    cfg.model.backbone.archh = cfg.model.backbone.pop('arch')
    problems = check_model_config(cfg)
    assert [p.source for p in problems] == ['model.backbone.archh']
    assert "did you mean 'arch'?" in problems[0].message
    assert ('valid arguments: arch, channels_last, drop_path_rate, frozen_stages'
            in problems[0].message)


def test_unknown_neck_and_head_arguments_are_all_reported():
    """SSDLiteHead takes **kwargs: its valid arguments are SSDHead's."""
    cfg = _retinanet()
    cfg.model.neck.num_out = cfg.model.neck.pop('num_outs')
    cfg.model.bbox_head = dict(type='SSDLiteHead', num_clases=3, in_channels=[16] * 5)
    problems = {p.source: p.message for p in check_model_config(cfg)}
    assert set(problems) == {'model.neck.num_out', 'model.bbox_head.num_clases'}
    assert "MobileMambaFPN has no argument 'num_out' (did you mean 'num_outs'?)" in \
        problems['model.neck.num_out']
    assert "did you mean 'num_classes'?" in problems['model.bbox_head.num_clases']
    assert 'anchor_generator' in problems['model.bbox_head.num_clases']


@pytest.mark.parametrize('change,match', [
    (dict(frozen_stages=5), 'frozen_stages must be -1 (none) or 0..2, got 5'),
    (dict(arch='b3'), "unknown arch 'b3'; valid names are ['b1', "),
    (dict(out_indices=(3,)), 'valid stage indices are 0, 1, 2'),
])
def test_invalid_backbone_values_fail_the_build_with_what_is_valid(change, match):
    cfg = _retinanet()
    cfg.model.backbone.update(change)
    problems = check_model_config(cfg)
    assert len(problems) == 1 and problems[0].source == 'model.backbone'
    assert problems[0].message.startswith('cannot be built: ') and match in problems[0].message


def test_invalid_neck_value_fails_the_build():
    cfg = _retinanet()
    cfg.model.neck.add_extra_convs = 'on_inputs'
    problems = check_model_config(cfg)
    assert [p.source for p in problems] == ['model.neck']
    assert 'cannot be built: MobileMambaFPN: add_extra_convs' in problems[0].message


def test_check_model_config_still_checks_channels():
    problems = check_model_config(_retinanet(in_channels=(200, 376, 448)))
    assert [p.source for p in problems] == ['model.neck.in_channels']


_SHIPPED = sorted(str(p.relative_to(REPO)) for pattern in (
    'configs/*.py', 'configs/quickstart/*.py', 'configs/custom/*.py') for p in REPO.glob(pattern))


@pytest.mark.parametrize('path', _SHIPPED)
def test_shipped_configs_pass_check_model_config(path):
    assert check_model_config(Config.fromfile(str(REPO / path))) == []


def test_rcnn_class_dependent_layers_are_named_so():
    """Mask R-CNN: classification, per-class box regression and mask logits all change."""
    def heads(num_classes):
        bbox = torch.nn.Module()
        bbox.fc_cls = torch.nn.Linear(8, num_classes + 1)
        bbox.fc_reg = torch.nn.Linear(8, 4 * num_classes)
        bbox.shared_fc = torch.nn.Linear(8, 8)
        mask = torch.nn.Module()
        mask.conv_logits = torch.nn.Conv2d(8, num_classes, 1)
        model = torch.nn.Module()
        model.bbox_head, model.mask_head = bbox, mask
        return model
    lines = load_from_report(heads(3), heads(80).state_dict())
    skipped = {ln.split(':')[0].split()[1]: ln for ln in lines}
    assert set(skipped) == {f'{layer}.{p}' for layer in ('bbox_head.fc_cls', 'bbox_head.fc_reg',
                                                         'mask_head.conv_logits')
                            for p in ('weight', 'bias')}
    assert all('class-dependent layer' in ln for ln in skipped.values())
