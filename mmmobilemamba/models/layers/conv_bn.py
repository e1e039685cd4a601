"""Convolution + BatchNorm units that fold into one biased convolution for inference.

On the Triton path (``scan_backend`` resolving to 'triton': CUDA by default) a BatchNorm with
frozen statistics (eval mode: training with ``norm_eval``, or undeployed inference) runs
with the ReLU and the residual add after it as one custom op
(:func:`mmmobilemamba.ops.frozen_bn.frozen_bn_act`): one kernel forwards and one backwards
instead of one per op and per gradient. Elsewhere (the CPU path, the twins) the modules run as
they are.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch.nn.modules.batchnorm import _BatchNorm

from mmmobilemamba.ops.frozen_bn import fold_frozen_bn, frozen_bn_act
from mmmobilemamba.ops.selective_scan import custom_op_backend
from .inference_conv import InferenceConv2d

__all__ = ['ConvBN', 'ResidualDWConv', 'ResidualFFN', 'fuse_conv_bn', 'fuse_activation',
           'frozen_bn_params', 'fuses_frozen_bn']


def frozen_bn_params(bn: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, float]]:
    """``(weight, bias, running_mean, running_var, eps)`` of an affine BatchNorm that uses its
    running statistics now (eval mode), else None."""
    if (isinstance(bn, _BatchNorm) and not bn.training and bn.affine
            and bn.track_running_stats and bn.running_mean is not None):
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    return None


def fuses_frozen_bn(scan_backend: str, x: torch.Tensor, *norms: nn.Module) -> bool:
    """Whether a layer runs its frozen BatchNorms ``norms`` (and what follows them) as one
    :func:`~mmmobilemamba.ops.frozen_bn.frozen_bn_act` op on ``x``: on the Triton path, with
    every norm in eval mode, on a (B, C, H, W) map."""
    return (x.dim() == 4 and custom_op_backend(scan_backend, x.device) == 'triton'
            and all(frozen_bn_params(bn) is not None for bn in norms))


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

    Attributes:
        scan_backend (str): the custom ops' implementation setting (see
            :class:`~mmmobilemamba.models.layers.SS2D`), set by the backbone for every layer:
            'triton' (or 'auto' on CUDA) fuses a frozen norm with what follows it.
    """

    scan_backend = 'auto'

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

    def forward_fused(self, x: torch.Tensor, relu: bool = False,
                      residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[residual +] act(BN(conv(x)))``: one op after the conv when the norm is frozen
        on the Triton path (:func:`fuses_frozen_bn`), else the modules, then an in-place
        ReLU and add.

        Args:
            x (Tensor): the input map.
            relu (bool): a ReLU after the norm. Default: False.
            residual (Tensor, optional): added at the end.
        """
        if fuses_frozen_bn(self.scan_backend, x, self.bn):
            return frozen_bn_act(self.conv(x), *frozen_bn_params(self.bn), relu=relu,
                                 residual=residual, backend='triton')
        out = nn.Sequential.forward(self, x)  # conv, norm (a subclass may add to its forward)
        if relu:
            out = torch.relu_(out)
        return out if residual is None else out.add_(residual)

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
        if self.identity_folded:
            return super().forward(x)
        conv = self.conv
        if conv.bias is None and fuses_frozen_bn(self.scan_backend, x, self.bn):
            # frozen norm and identity folded into the kernel (one small op over the weights):
            # one conv, whose input gradient holds the identity's
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
                else None  # autocast's: the conv then casts nothing, nor back in the backward
            weight, bias = fold_frozen_bn(conv.weight, *frozen_bn_params(self.bn),
                                          identity=True, dtype=dtype, backend='triton')
            return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                            conv.groups)
        return nn.Sequential.forward(self, x).add_(x)

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

    scan_backend = ConvBN.scan_backend  # see ConvBN

    def __init__(self, channels: int, hidden_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.pw1 = ConvBN(channels, hidden_channels, norm_cfg=norm_cfg)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(hidden_channels, channels, bn_weight_init=0.0, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor, drop_path: Optional[nn.Module] = None,
                outer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x + FFN(x)``, or with ``outer`` (a block's input around it)
        ``outer + drop_path(x + FFN(x))``.

        Args:
            x (Tensor): the input map.
            drop_path (nn.Module, optional): timm's ``DropPath`` (or an identity) applied to
                the unit's output before ``outer`` is added.
            outer (Tensor, optional): added at the end.
        """
        if isinstance(self.act, nn.ReLU) and fuses_frozen_bn(self.scan_backend, x, self.pw1.bn,
                                                              self.pw2.bn):
            # each conv's norm with the ReLU / the residual adds and the drop path after it:
            # one op each
            hidden = self.pw1.forward_fused(x, relu=True)
            mask, gain = _drop_path_mask(drop_path, x)
            return frozen_bn_act(self.pw2.conv(hidden), *frozen_bn_params(self.pw2.bn),
                                 residual=x, sample_scale=mask, sample_gain=gain, outer=outer,
                                 backend='triton')
        out = self.pw2(self.act(self.pw1(x))).add_(x)
        if drop_path is not None:
            out = drop_path(out)
        return out if outer is None else out.add_(outer)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold both norms; the ReLU runs fused in the first conv."""
        self.pw1.switch_to_deploy()
        self.pw2.switch_to_deploy()
        fuse_activation(self.pw1, self, 'act', 'relu')


def _drop_path_mask(drop_path: Optional[nn.Module],
                    x: torch.Tensor) -> Tuple[Optional[torch.Tensor], float]:
    """timm's ``DropPath`` as ``(mask, gain)``: a 0/1 value per image (one kernel) and the
    factor it is scaled by, or ``(None, 1)`` where it is an identity (eval mode, rate 0)."""
    prob = getattr(drop_path, 'drop_prob', 0.0)
    if drop_path is None or not drop_path.training or not prob:
        return None, 1.0
    keep = 1.0 - prob
    gain = 1.0 / keep if getattr(drop_path, 'scale_by_keep', True) and keep > 0 else 1.0
    return x.new_empty(x.shape[0]).bernoulli_(keep), gain


def fuse_activation(conv_bn: 'ConvBN', owner: nn.Module, act_name: str, activation: str) -> None:
    """Move ``owner.<act_name>`` (an activation after ``conv_bn``) into its fused conv."""
    if isinstance(getattr(owner, act_name), nn.Identity):
        return  # done before
    if not isinstance(conv_bn.bn, nn.Identity):
        raise RuntimeError('fuse_activation: fold the norm into the conv first (switch_to_deploy)')
    conv_bn.conv = InferenceConv2d.from_conv(conv_bn.conv, activation)
    setattr(owner, act_name, nn.Identity())
