"""FPN for a coarse backbone: adds finer levels with learned (transposed-conv) upsampling.

MobileMamba's three stages sit at strides 16, 32 and 64, one octave coarser than the
stride-8/16/32 stages a standard FPN expects. :class:`MobileMambaFPN` is an FPN over those
stages that continues the top-down pathway below the finest input with stride-2 transposed
convolutions, so detectors get their usual pyramids:

* RetinaNet, strides 8..128: ``num_deconv_levels=1``, ``add_extra_convs='on_input'``,
  ``num_outs=5`` (one finer level, three from the stages, one coarser extra conv).
* Mask R-CNN, strides 4..64: ``num_deconv_levels=2``, ``num_outs=5`` (two finer levels,
  three from the stages).

Output order is fine to coarse: the deconv levels (finest first), the levels built on the
backbone stages, then the extra coarser levels.

It computes what the authors' detection neck (``EfficientViTFPN``) computes, and their
detectors' neck weights load into it directly (see :meth:`MobileMambaFPN.adapt_state_dict_keys`).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ..registry import register_model

__all__ = ['MobileMambaFPN']

_EXTRA_SOURCES = ('on_input', 'on_lateral', 'on_output')

ConfigType = Optional[dict]


def _check_in_channels(in_channels: Sequence[int]) -> List[int]:
    """Normalise ``in_channels`` to a list of positive ints or raise a clear error."""
    if isinstance(in_channels, int) or not isinstance(in_channels, (list, tuple)):
        raise TypeError('MobileMambaFPN: in_channels must be a list of ints, one per input '
                        f'level; got {in_channels!r}')
    channels = list(in_channels)
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError('MobileMambaFPN: in_channels must be a non-empty list of positive '
                         f'ints; got {in_channels!r}')
    return channels


class _DeconvLevel(nn.Module):
    """One level finer than its input: stride-2 transposed conv, then a 3x3 output conv.

    The transposed conv extends the top-down pathway (its output is the level's merged map,
    which later deconv levels upsample further); the 3x3 conv plays the part of FPN's output
    conv for this level.

    Args:
        channels (int): channels in and out (the FPN's ``out_channels``).
        conv_cfg (dict, optional): conv config of the 3x3 output conv.
        norm_cfg (dict, optional): norm after each conv.
        act_cfg (dict, optional): activation after each conv.
    """

    def __init__(self, channels: int, conv_cfg: ConfigType, norm_cfg: ConfigType,
                 act_cfg: ConfigType) -> None:
        super().__init__()
        self.upsample = ConvModule(
            channels, channels, kernel_size=2, stride=2, conv_cfg=dict(type='deconv'),
            norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        self.fpn_conv = ConvModule(
            channels, channels, kernel_size=3, padding=1, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)

    def forward(self, merged: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Upsample one level.

        Args:
            merged (Tensor): the merged top-down map of the level above, (N, C, H, W).

        Returns:
            tuple[Tensor, Tensor]: this level's merged map (for the next finer level) and its
            output, both (N, C, 2H, 2W).
        """
        merged = self.upsample(merged)
        return merged, self.fpn_conv(merged)


@register_model()
class MobileMambaFPN(BaseModule):
    """Feature pyramid over MobileMamba's stages, with transposed-conv levels below them.

    The arguments follow mmdet's ``FPN``; ``num_deconv_levels`` is new. With
    ``num_deconv_levels=0`` this is a plain FPN.

    Args:
        in_channels (list[int]): channels of each backbone output given to ``forward``.
        out_channels (int): channels of every output level.
        num_outs (int): number of output levels in total: deconv levels + levels on the
            used inputs + extra coarser levels.
        start_level (int): index of the first input used (finer inputs are ignored).
            Default: 0.
        end_level (int): index of the last input used, inclusive; -1 for the last input.
            With an ``end_level`` before the last input no extra coarser levels are made.
            Default: -1.
        num_deconv_levels (int): levels added below the finest used input, each at half its
            predecessor's stride: a stride-2 ``ConvTranspose2d`` (kernel 2) then a 3x3 conv.
            Default: 0.
        add_extra_convs (bool | str): how extra coarser levels are made. False: stride-2
            max-pooling of the last output. 'on_input' / 'on_lateral' / 'on_output': a
            stride-2 3x3 conv on the last used input / its lateral / the last output, then on
            the previous extra level. True means 'on_input'. Default: False.
        relu_before_extra_convs (bool): apply ReLU before every extra conv after the first.
            Default: False.
        no_norm_on_lateral (bool): no norm layer in the 1x1 lateral convs. Default: False.
        conv_cfg (dict, optional): conv config of the lateral/output/extra convs.
        norm_cfg (dict, optional): norm config of all convs (none by default).
        act_cfg (dict, optional): activation config of all convs (none by default).
        upsample_cfg (dict): keyword arguments of ``F.interpolate`` in the top-down pathway
            between used inputs. Default: ``dict(mode='nearest')``.
        init_cfg (dict | list[dict], optional): initialisation config; Xavier-uniform for
            every conv and transposed conv by default.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int,
                 start_level: int = 0,
                 end_level: int = -1,
                 num_deconv_levels: int = 0,
                 add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False,
                 conv_cfg: ConfigType = None,
                 norm_cfg: ConfigType = None,
                 act_cfg: ConfigType = None,
                 upsample_cfg: ConfigType = dict(mode='nearest'),
                 init_cfg: Union[dict, List[dict], None] = dict(
                     type='Xavier', layer=['Conv2d', 'ConvTranspose2d'],
                     distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = _check_in_channels(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(self.in_channels)
        self.num_outs = num_outs
        self.num_deconv_levels = num_deconv_levels
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg or dict(mode='nearest'))
        self.start_level, self.backbone_end_level = self._check_levels(
            start_level, end_level, num_outs, num_deconv_levels)
        self.add_extra_convs = self._check_extra_convs(add_extra_convs)

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(self.start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(
                self.in_channels[i], out_channels, kernel_size=1, conv_cfg=conv_cfg,
                norm_cfg=None if no_norm_on_lateral else norm_cfg, act_cfg=act_cfg,
                inplace=False))
            self.fpn_convs.append(ConvModule(
                out_channels, out_channels, kernel_size=3, padding=1, conv_cfg=conv_cfg,
                norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

        # Kept in ModuleLists (no init_weights of their own) so that init_cfg's Xavier init is
        # not overwritten by ConvModule.init_weights' kaiming init.
        self.deconv_levels = nn.ModuleList(
            _DeconvLevel(out_channels, conv_cfg, norm_cfg, act_cfg)
            for _ in range(num_deconv_levels))

        self.extra_convs = nn.ModuleList()
        if self.add_extra_convs:
            for i in range(self.num_extra_levels):
                if i == 0 and self.add_extra_convs == 'on_input':
                    extra_in = self.in_channels[self.backbone_end_level - 1]
                else:
                    extra_in = out_channels
                self.extra_convs.append(ConvModule(
                    extra_in, out_channels, kernel_size=3, stride=2, padding=1,
                    conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

    @property
    def num_extra_levels(self) -> int:
        """Number of output levels coarser than the last used input."""
        used = self.backbone_end_level - self.start_level
        return self.num_outs - self.num_deconv_levels - used

    def _check_levels(self, start_level: int, end_level: int, num_outs: int,
                      num_deconv_levels: int) -> Tuple[int, int]:
        """Validate the level arguments; return ``(start_level, backbone_end_level)``."""
        if not 0 <= start_level < self.num_ins:
            raise ValueError(f'MobileMambaFPN: start_level={start_level} is out of range for '
                             f'{self.num_ins} inputs (in_channels={self.in_channels})')
        if not isinstance(num_deconv_levels, int) or num_deconv_levels < 0:
            raise ValueError('MobileMambaFPN: num_deconv_levels must be an int >= 0; got '
                             f'{num_deconv_levels!r}')
        if end_level in (-1, self.num_ins - 1):
            end = self.num_ins  # all inputs used: extra coarser levels are allowed
            min_outs = num_deconv_levels + end - start_level
            if num_outs < min_outs:
                raise ValueError(
                    f'MobileMambaFPN: num_outs={num_outs} is too small: {num_deconv_levels} '
                    f'deconv level(s) + {end - start_level} input level(s) need at least '
                    f'{min_outs}')
        else:
            if not start_level <= end_level < self.num_ins:
                raise ValueError(f'MobileMambaFPN: end_level={end_level} must be -1 or in '
                                 f'[start_level={start_level}, {self.num_ins - 1}]')
            end = end_level + 1
            expected = num_deconv_levels + end - start_level
            if num_outs != expected:
                raise ValueError(
                    f'MobileMambaFPN: with end_level={end_level} no extra levels are made, so '
                    f'num_outs must be {expected} ({num_deconv_levels} deconv + '
                    f'{end - start_level} input levels); got {num_outs}')
        return start_level, end

    @staticmethod
    def _check_extra_convs(add_extra_convs: Union[bool, str]) -> Union[bool, str]:
        """Normalise ``add_extra_convs``: True becomes 'on_input'."""
        if add_extra_convs is True:
            return 'on_input'
        if add_extra_convs is False or add_extra_convs in _EXTRA_SOURCES:
            return add_extra_convs
        raise ValueError(f'MobileMambaFPN: add_extra_convs must be a bool or one of '
                         f'{_EXTRA_SOURCES}; got {add_extra_convs!r}')

    def output_strides(self, input_strides: Sequence[int]) -> List[int]:
        """Strides of the outputs for inputs at ``input_strides``.

        Args:
            input_strides (list[int]): stride of each input level, e.g. ``(16, 32, 64)``.

        Returns:
            list[int]: one stride per output, fine to coarse, e.g. ``[8, 16, 32, 64, 128]``.
        """
        if len(input_strides) != self.num_ins:
            raise ValueError(f'MobileMambaFPN: expected {self.num_ins} input strides, got '
                             f'{list(input_strides)}')
        used = list(input_strides[self.start_level:self.backbone_end_level])
        finer = [used[0] // 2**i for i in range(self.num_deconv_levels, 0, -1)]
        coarser = [used[-1] * 2**i for i in range(1, self.num_extra_levels + 1)]
        return finer + used + coarser

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        """Raise a clear error when the inputs do not match ``in_channels``."""
        if not isinstance(inputs, (list, tuple)):
            raise TypeError('MobileMambaFPN: forward expects a tuple of feature maps, one per '
                            f'backbone stage; got {type(inputs).__name__}')
        got = [x.shape[1] if x.dim() == 4 else tuple(x.shape) for x in inputs]
        if len(inputs) != self.num_ins:
            raise ValueError(
                f'MobileMambaFPN: expected {self.num_ins} input levels with channels '
                f'{self.in_channels}, got {len(inputs)} with channels {got}; set the neck\'s '
                'in_channels to the backbone\'s output channels (one per out_indices entry)')
        for level, (x, expected) in enumerate(zip(inputs, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != expected:
                raise ValueError(
                    f'MobileMambaFPN: input level {level} has shape {tuple(x.shape)} but '
                    f'in_channels[{level}] = {expected} (expected (N, {expected}, H, W)); '
                    f'in_channels={self.in_channels}, the inputs have channels {got}')

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Build the pyramid.

        Args:
            inputs (tuple[Tensor]): backbone outputs, fine to coarse, ``(N, C_i, H_i, W_i)``
                with ``C_i = in_channels[i]``.

        Returns:
            tuple[Tensor]: ``num_outs`` maps of ``out_channels`` channels, fine to coarse.
        """
        self._check_inputs(inputs)
        laterals = [conv(inputs[i + self.start_level])
                    for i, conv in enumerate(self.lateral_convs)]

        # top-down pathway over the used inputs (not in place: laterals[i] is reused below)
        for i in range(len(laterals) - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                   **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]

        # continue the top-down pathway below the finest input with learned upsampling
        merged = laterals[0]
        finer = []
        for level in self.deconv_levels:
            merged, out = level(merged)
            finer.insert(0, out)

        outs.extend(self._extra_levels(inputs, laterals, outs))
        return tuple(finer + outs)

    def adapt_state_dict_keys(self, state_dict: Dict[str, torch.Tensor], prefix: str = '',
                              log: bool = True) -> None:
        """Rename the authors' ``EfficientViTFPN`` keys under ``prefix`` to ours, in place.

        Their ``extra_trans_convs`` / ``extra_fpn_convs`` become our ``deconv_levels`` (see
        :func:`~mmmobilemamba.models.checkpoint.convert_neck_keys`); called by
        ``load_state_dict`` before the weights are copied.

        Args:
            state_dict (dict): the state dict being loaded; modified in place.
            prefix (str): this module's prefix in it, e.g. ``'neck.'``.
            log (bool): log the renaming. Default: True.
        """
        from ..checkpoint import convert_neck_keys
        converted = convert_neck_keys(state_dict, prefix)
        if converted.keys() == state_dict.keys():
            return
        if log:
            print_log(f'MobileMambaFPN: keys under {prefix!r} mapped from the authors\' '
                      'EfficientViTFPN layout', logger='current')
        state_dict.clear()
        state_dict.update(converted)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.adapt_state_dict_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _extra_levels(self, inputs: Sequence[torch.Tensor], laterals: List[torch.Tensor],
                      outs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The levels coarser than the last used input."""
        extra: List[torch.Tensor] = []
        if self.num_extra_levels <= 0:
            return extra
        if not self.add_extra_convs:
            last = outs[-1]
            for _ in range(self.num_extra_levels):
                last = F.max_pool2d(last, 1, stride=2)
                extra.append(last)
            return extra
        if self.add_extra_convs == 'on_input':
            source = inputs[self.backbone_end_level - 1]
        elif self.add_extra_convs == 'on_lateral':
            source = laterals[-1]
        else:
            source = outs[-1]
        extra.append(self.extra_convs[0](source))
        for conv in self.extra_convs[1:]:
            prev = F.relu(extra[-1]) if self.relu_before_extra_convs else extra[-1]
            extra.append(conv(prev))
        return extra
