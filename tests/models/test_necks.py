"""MobileMambaFPN: output strides/channels, registry builds, and clear errors."""
import pytest
import torch

pytest.importorskip('mmcv')
from mmmobilemamba.models.necks import MobileMambaFPN  # noqa: E402

B1_CHANNELS = [200, 376, 448]
STRIDES = (16, 32, 64)
RETINANET = dict(num_deconv_levels=1, add_extra_convs='on_input', num_outs=5)
MASK_RCNN = dict(num_deconv_levels=2, num_outs=5)


def fake_stages(channels=(8, 12, 16), size: int = 64):
    """Stride-16/32/64 maps of a ``size`` x ``size`` image (64 -> 4x4, 2x2, 1x1)."""
    return tuple(torch.randn(2, c, size // s, size // s) for c, s in zip(channels, STRIDES))


def output_sizes(outs):
    return [tuple(o.shape[2:]) for o in outs]


@pytest.mark.parametrize('num_deconv_levels, expected_strides', [
    (0, [16, 32, 64]),
    (1, [8, 16, 32, 64]),
    (2, [4, 8, 16, 32, 64]),
])
def test_deconv_levels_strides_and_channels(num_deconv_levels, expected_strides):
    neck = MobileMambaFPN([8, 12, 16], 32, num_outs=3 + num_deconv_levels,
                          num_deconv_levels=num_deconv_levels)
    outs = neck(fake_stages())
    assert neck.output_strides(STRIDES) == expected_strides
    assert output_sizes(outs) == [(64 // s, 64 // s) for s in expected_strides]
    assert all(o.shape[:2] == (2, 32) for o in outs)


def test_retinanet_pyramid_is_stride_8_to_128():
    neck = MobileMambaFPN([8, 12, 16], 32, **RETINANET)
    outs = neck(fake_stages(size=128))
    assert neck.output_strides(STRIDES) == [8, 16, 32, 64, 128]
    assert output_sizes(outs) == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # the extra level is a conv on the last backbone input (448 channels for B1)
    assert neck.extra_convs[0].conv.in_channels == 16


def test_mask_rcnn_pyramid_is_stride_4_to_64():
    neck = MobileMambaFPN([8, 12, 16], 32, **MASK_RCNN)
    outs = neck(fake_stages())
    assert neck.output_strides(STRIDES) == [4, 8, 16, 32, 64]
    assert output_sizes(outs) == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert len(neck.extra_convs) == 0


def test_odd_sizes_follow_the_inputs():
    # 100x100 input: stages 7x7 (ceil), 4x4, 2x2; top-down resizes to each lateral's size
    stages = tuple(torch.randn(1, c, s, s) for c, s in zip((8, 12, 16), (7, 4, 2)))
    outs = MobileMambaFPN([8, 12, 16], 8, **MASK_RCNN)(stages)
    assert output_sizes(outs) == [(28, 28), (14, 14), (7, 7), (4, 4), (2, 2)]


def test_extra_levels_without_convs_are_max_pooled():
    neck = MobileMambaFPN([8, 12, 16], 8, num_outs=5, num_deconv_levels=1)
    outs = neck(fake_stages(size=128))
    assert output_sizes(outs)[-1] == (1, 1)
    assert torch.equal(outs[-1], outs[-2][:, :, ::2, ::2])


@pytest.mark.parametrize('source', ['on_lateral', 'on_output'])
def test_extra_convs_on_lateral_and_output(source):
    neck = MobileMambaFPN([8, 12, 16], 8, num_outs=6, add_extra_convs=source,
                          relu_before_extra_convs=True, num_deconv_levels=1)
    outs = neck(fake_stages(size=256))
    assert neck.output_strides(STRIDES) == [8, 16, 32, 64, 128, 256]
    assert output_sizes(outs)[-2:] == [(2, 2), (1, 1)]


def test_start_and_end_level():
    neck = MobileMambaFPN([8, 12, 16], 8, num_outs=3, start_level=1, end_level=1,
                          num_deconv_levels=2)
    outs = neck(fake_stages())
    assert neck.output_strides(STRIDES) == [8, 16, 32]
    assert output_sizes(outs) == [(8, 8), (4, 4), (2, 2)]


def test_param_count_of_b1_necks():
    """Budget the lead checks the paper's totals with (out_channels=256)."""
    def count(**kw):
        return sum(p.numel() for p in MobileMambaFPN(B1_CHANNELS, 256, **kw).parameters())

    lateral = sum(B1_CHANNELS) * 256 + 3 * 256
    fpn = 3 * (256 * 256 * 9 + 256)
    deconv_level = (256 * 256 * 4 + 256) + (256 * 256 * 9 + 256)
    extra_on_input = 448 * 256 * 9 + 256
    assert count(**MASK_RCNN) == lateral + fpn + 2 * deconv_level == 3_738_112
    assert count(**RETINANET) == lateral + fpn + deconv_level + extra_on_input == 3_918_080


def test_init_weights_runs_and_uses_xavier_for_deconv():
    neck = MobileMambaFPN([8, 12, 16], 8, **MASK_RCNN)
    neck.init_weights()
    assert torch.count_nonzero(neck.deconv_levels[0].upsample.conv.bias) == 0


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registered_in_each_registry(scope):
    registry = pytest.importorskip(f'{scope}.registry')
    assert registry.MODELS.module_dict['MobileMambaFPN'] is MobileMambaFPN


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_each_registry(scope):
    registry = pytest.importorskip(f'{scope}.registry')
    neck = registry.MODELS.build(dict(type='MobileMambaFPN', in_channels=[8, 12, 16],
                                      out_channels=16, **RETINANET))
    assert isinstance(neck, MobileMambaFPN)
    assert len(neck(fake_stages(size=128))) == 5


def test_wrong_channels_name_the_level_and_expectation():
    neck = MobileMambaFPN(B1_CHANNELS, 16, **RETINANET)
    stages = fake_stages(channels=(144, 272, 368))  # a t2 backbone given to a b1 neck
    with pytest.raises(ValueError, match=r'input level 0 .* in_channels\[0\] = 200') as err:
        neck(stages)
    assert '[144, 272, 368]' in str(err.value)


def test_wrong_number_of_inputs_names_both_channel_lists():
    neck = MobileMambaFPN(B1_CHANNELS, 16, **RETINANET)
    with pytest.raises(ValueError, match=r'expected 3 input levels with channels '
                                         r'\[200, 376, 448\], got 2 with channels \[200, 376\]'):
        neck(fake_stages(channels=B1_CHANNELS)[:2])


@pytest.mark.parametrize('kwargs, message', [
    (dict(in_channels=200, num_outs=3), 'list of ints'),
    (dict(in_channels=[], num_outs=3), 'non-empty'),
    (dict(num_outs=3, num_deconv_levels=1), 'num_outs=3 is too small'),
    (dict(num_outs=4, end_level=1), 'num_outs must be 2'),
    (dict(num_outs=3, start_level=3), 'start_level=3'),
    (dict(num_outs=3, num_deconv_levels=-1), 'num_deconv_levels'),
    (dict(num_outs=4, add_extra_convs='on_everything'), 'add_extra_convs'),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
    kwargs = dict(dict(in_channels=[8, 12, 16], out_channels=8), **kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        MobileMambaFPN(**kwargs)


def test_norm_and_activation_configs_reach_every_conv():
    neck = MobileMambaFPN([8, 12, 16], 8, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'),
                          no_norm_on_lateral=True, **RETINANET)
    assert all(not conv.with_norm for conv in neck.lateral_convs)
    level = neck.deconv_levels[0]
    assert level.upsample.with_norm and level.fpn_conv.with_norm and neck.extra_convs[0].with_norm
    outs = neck.eval()(fake_stages(size=128))
    assert all((o >= 0).all() for o in outs)  # every output ends in a ReLU
