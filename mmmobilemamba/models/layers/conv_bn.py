"""Convolution + BatchNorm units that fold into one biased convolution for inference."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from .inference_conv import InferenceConv2d

__all__ = ['ConvBN', 'ResidualDWConv', 'ResidualFFN', 'fuse_conv_bn', 'fuse_activation']


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> InferenceConv2d:
    """Return one biased conv equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    The result is an :class:`InferenceConv2d` (a ``Conv2d`` with packed CPU weights).

    Args:
        conv (nn.Conv2d): the convolution (with or without bias).
        bn (nn.Module): a BatchNorm layer with running statistics (BN or SyncBN).
    """
    if getattr(bn, 'running_var', None) is None:
        raise TypeError(f'cannot fold {type(bn).__name__} into a conv: only BatchNorm layers '
                        'with running statistics fold')
    std = (bn.running_var + bn.eps).sqrt()
    scale = (bn.weight if bn.affine else torch.ones_like(std)) / std
    shift = bn.bias if bn.affine else torch.zeros_like(std)
    fused = InferenceConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                            conv.padding, conv.dilation, conv.groups, bias=True,
                            device=conv.weight.device, dtype=conv.weight.dtype)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((conv_bias - bn.running_mean) * scale + shift)
    return fused


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False)`` followed by a norm layer (BatchNorm by default).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): conv kernel size. Default: 1.
        stride (int): conv stride. Default: 1.
        padding (int): conv zero padding. Default: 0.
        groups (int): conv groups (``in_channels`` for a depthwise conv). Default: 1.
        bn_weight_init (float): initial norm weight; 0 makes a residual branch start as
            identity ("zero-init"). Default: 1.
        norm_cfg (dict): config of the norm layer. Default: ``dict(type='BN')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.add_module('conv', nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                          padding, groups=groups, bias=False))
        norm = build_norm_layer(norm_cfg or dict(type='BN'), out_channels)[1]
        if getattr(norm, 'weight', None) is not None:
            nn.init.constant_(norm.weight, bn_weight_init)
            nn.init.zeros_(norm.bias)
        self.add_module('bn', norm)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold the norm into the conv in place (the norm becomes an identity)."""
        if isinstance(self.bn, nn.Identity):
            return
        self.conv = fuse_conv_bn(self.conv, self.bn)
        self.bn = nn.Identity()


class ResidualDWConv(ConvBN):
    """``x + BN(DWConv3x3(x))``; at deploy the identity folds into the kernel's centre tap.

    Args:
        channels (int): channels (the conv is depthwise).
        bn_weight_init (float): initial BN weight (0 in the blocks, 1 in the downsampling).
        norm_cfg (dict, optional): config of the norm layer.
    """

    def __init__(self, channels: int, bn_weight_init: float = 1.0,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__(channels, channels, 3, 1, 1, groups=channels,
                         bn_weight_init=bn_weight_init, norm_cfg=norm_cfg)
        self.identity_folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.identity_folded else out.add_(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        super().switch_to_deploy()
        if not self.identity_folded:
            self.conv.weight[:, 0, 1, 1] += 1.0
            self.identity_folded = True


class ResidualFFN(nn.Module):
    """``x + ConvBN(h, c, zero-init)(ReLU(ConvBN(c, h)(x)))``: the 1x1 feed-forward unit.

    Args:
        channels (int): input and output channels.
        hidden_channels (int): hidden channels (2x ``channels`` in MobileMamba).
        norm_cfg (dict, optional): config of the norm layers.
    """

    def __init__(self, channels: int, hidden_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.pw1 = ConvBN(channels, hidden_channels, norm_cfg=norm_cfg)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(hidden_channels, channels, bn_weight_init=0.0, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x))).add_(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold both norms; the ReLU runs fused in the first conv."""
        self.pw1.switch_to_deploy()
        self.pw2.switch_to_deploy()
        fuse_activation(self.pw1, self, 'act', 'relu')


def fuse_activation(conv_bn: 'ConvBN', owner: nn.Module, act_name: str, activation: str) -> None:
    """Move ``owner.<act_name>`` (an activation after ``conv_bn``) into its fused conv."""
    if isinstance(getattr(owner, act_name), nn.Identity):
        return  # done before
    if not isinstance(conv_bn.bn, nn.Identity):
        raise RuntimeError('fuse_activation: fold the norm into the conv first (switch_to_deploy)')
    conv_bn.conv = InferenceConv2d.from_conv(conv_bn.conv, activation)
    setattr(owner, act_name, nn.Identity())
