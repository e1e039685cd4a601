"""MobileMamba (He et al., CVPR 2025) as an OpenMMLab backbone.

Blocks -> stages -> model, in the order of the paper:

* :class:`MKDeConv`: the local branch (multi-kernel depthwise conv).
* :class:`MRFFI`: the token mixer; channels split into global (WTE-Mamba), local (MK-DeConv) and
  identity groups.
* :class:`MobileMambaBlock`: dw conv, FFN, MRFFI, dw conv, FFN (all residual) + drop path.
* :class:`Downsample`: residual dw conv + FFN, patch merging (stride 2, SE), dw conv + FFN.
* :class:`MobileMamba`: stride-16 stem and three stages at strides 16, 32, 64.

Released variants are named by ``arch`` ('t2', 't4', 's6', 'b1', 'b2', 'b4'); the authors'
checkpoints load through ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (see
:mod:`mmmobilemamba.models.checkpoint`).
"""
import copy
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import DropPath, SqueezeExcite
from torch.nn.modules.batchnorm import _BatchNorm

from mmmobilemamba.ops.frozen_bn import frozen_bn_act
from ..layers import (ConvBN, InferenceConv2d, ResidualDWConv, ResidualFFN, WTEMamba,
                      fuse_activation, fuse_conv_bn)
from ..layers.conv_bn import frozen_bn_params, fuses_frozen_bn
from ..registry import register_model

__all__ = ['MobileMamba', 'MobileMambaBlock', 'MRFFI', 'MKDeConv', 'Downsample', 'ARCH_SETTINGS',
           'CUDA_FORM_CHANNELS_LAST', 'DEPLOY_FORMS', 'split_channels']

# switch_to_deploy's forms: eager CPU, eager CUDA, graph runtimes (ONNX, ExecuTorch)
DEPLOY_FORMS = ('cpu', 'cuda', 'export')

_STAGE_KEYS = ('embed_dims', 'depths', 'global_ratios', 'local_ratios', 'kernel_sizes')

# Spec section 4. B1/B2/B4 are one architecture trained at 256/384/512.
_BASE_RATIOS = dict(global_ratios=(0.8, 0.7, 0.6), local_ratios=(0.2, 0.2, 0.3),
                    kernel_sizes=(7, 5, 3), ssm_ratio=2)
ARCH_SETTINGS: Dict[str, dict] = {
    't2': dict(embed_dims=(144, 272, 368), depths=(1, 2, 2), drop_path_rate=0.0, **_BASE_RATIOS),
    't4': dict(embed_dims=(176, 368, 448), depths=(1, 2, 2), drop_path_rate=0.0, **_BASE_RATIOS),
    's6': dict(embed_dims=(192, 384, 448), depths=(1, 2, 2), drop_path_rate=0.0, **_BASE_RATIOS),
    'b1': dict(embed_dims=(200, 376, 448), depths=(2, 3, 2), drop_path_rate=0.03, **_BASE_RATIOS),
}
ARCH_SETTINGS['b2'] = dict(ARCH_SETTINGS['b1'])
ARCH_SETTINGS['b4'] = dict(ARCH_SETTINGS['b1'])

# The CUDA deploy form's memory format where ``channels_last`` is None. cuDNN's tensor-core
# 1x1 convolutions want NHWC in bfloat16, while NCHW needs no layout change anywhere; no GPU
# has measured both yet (tools/analysis/gpu_check.sh measures the deployed form both ways, the
# 'deployed-channels-last' rows), so NCHW stays the default until a measurement favours NHWC.
CUDA_FORM_CHANNELS_LAST = False


def split_channels(channels: int, global_ratio: float, local_ratio: float) -> Tuple[int, int, int]:
    """Sizes of the (global, local, identity) channel groups of an MRFFI.

    The global group is rounded to the nearest multiple of 16 (ties up), the local group is cut
    so that both fit, the identity group takes the rest.
    """
    global_ch = int(int(global_ratio * channels) / 16 + 0.5) * 16
    global_ch = min(global_ch, channels)
    local_ch = int(local_ratio * channels)
    if global_ch + local_ch > channels:
        local_ch = channels - global_ch
    return global_ch, local_ch, channels - global_ch - local_ch


class MKDeConv(nn.Module):
    """Multi-kernel depthwise conv: channel parts with kernels (3, 5, 7, ...), then BN-ReLU-
    per-channel scale (1x1 depthwise conv)-BN.

    The release uses one kernel per stage (``kernel_sizes=(k,)``); the paper's general form
    splits the channels into ``len(kernel_sizes)`` near-equal parts.

    Args:
        channels (int): channels of the local group.
        kernel_sizes (Sequence[int]): one odd kernel size per channel part.
        norm_cfg (dict, optional): norm layer config (BatchNorm by default).
    """

    scan_backend = ConvBN.scan_backend  # the custom ops' setting (see ConvBN)

    def __init__(self, channels: int, kernel_sizes: Sequence[int],
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        kernel_sizes = tuple(kernel_sizes)
        if not kernel_sizes or any(k % 2 == 0 or k < 1 for k in kernel_sizes):
            raise ValueError(f'MKDeConv kernel sizes must be odd positive ints, got {kernel_sizes}')
        if len(kernel_sizes) > channels:
            raise ValueError(f'MKDeConv: {len(kernel_sizes)} kernels for only {channels} channels')
        base, extra = divmod(channels, len(kernel_sizes))
        self.part_channels = [base + (i < extra) for i in range(len(kernel_sizes))]
        self.dwconvs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
            for c, k in zip(self.part_channels, kernel_sizes))
        self.bn1 = _build_norm(norm_cfg, channels)
        self.act = nn.ReLU(inplace=True)
        self.dw1x1 = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        self.bn2 = _build_norm(norm_cfg, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.dwconvs) == 1:
            x = self.dwconvs[0](x)
        else:
            parts = channel_slices(x, self.part_channels)
            x = torch.cat([conv(p) for conv, p in zip(self.dwconvs, parts)], dim=1)
        if isinstance(self.act, nn.ReLU) and fuses_frozen_bn(self.scan_backend, x, self.bn1,
                                                              self.bn2):
            # frozen norms: BN, ReLU, per-channel scale and BN as one op
            return frozen_bn_act(x, *frozen_bn_params(self.bn1), relu=True,
                                 scale=self.dw1x1.weight, second=frozen_bn_params(self.bn2),
                                 backend='triton')
        return self.bn2(self.dw1x1(self.act(self.bn1(x))))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold bn1 into the kernels (per channel part) and bn2 into the 1x1 scale."""
        if isinstance(self.bn1, nn.Identity):
            return
        start = 0
        for i, conv in enumerate(self.dwconvs):
            part = slice(start, start + conv.out_channels)
            start += conv.out_channels
            # ReLU(cat(parts)) = cat(ReLU(parts)): the ReLU runs fused in each part's conv
            self.dwconvs[i] = InferenceConv2d.from_conv(
                fuse_conv_bn(conv, _slice_bn(self.bn1, part)), 'relu')
        self.dw1x1 = fuse_conv_bn(self.dw1x1, self.bn2)
        self.bn1, self.bn2, self.act = nn.Identity(), nn.Identity(), nn.Identity()


def channel_slices(x: torch.Tensor, sizes: Sequence[int]) -> List[torch.Tensor]:
    """``x.split(sizes, dim=1)`` as one slice per part (views in eager mode, as the split's):
    exported, a split is one op XNNPACK does not delegate, a slice one it does."""
    parts, start = [], 0
    for size in sizes:
        parts.append(x[:, start:start + size])
        start += size
    return parts


def _build_norm(norm_cfg: Optional[dict], channels: int) -> nn.Module:
    return build_norm_layer(norm_cfg or dict(type='BN'), channels)[1]


def _slice_bn(bn: nn.Module, part: slice) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm2d holding the statistics of channels ``part`` of ``bn``."""
    out = nn.BatchNorm2d(part.stop - part.start, eps=bn.eps).to(bn.running_mean)
    out.weight.data.copy_(bn.weight[part])
    out.bias.data.copy_(bn.bias[part])
    out.running_mean.copy_(bn.running_mean[part])
    out.running_var.copy_(bn.running_var[part])
    return out.eval()


class MRFFI(nn.Module):
    """Multi-Receptive Field Feature Interaction: the token mixer of a MobileMamba block.

    ``proj(ReLU(cat[WTEMamba(x_g), MKDeConv(x_l), x_r]))``; the identity group ``x_r`` gets no
    computation in the mixer (the paper's "eliminate redundant identity").

    Args:
        channels (int): input/output channels.
        global_ratio (float): share of channels for the global (WTE-Mamba) group.
        local_ratio (float): share of channels for the local (MK-DeConv) group.
        local_kernel_sizes (Sequence[int]): kernels of the MK-DeConv parts.
        global_kernel_size (int): kernel of the wavelet-domain depthwise conv.
        ssm_ratio (float): SS2D inner width ratio.
        norm_cfg (dict, optional): norm layer config.
        scan_backend (str): the custom ops' implementation (see :class:`MobileMamba`).
    """

    def __init__(self, channels: int, global_ratio: float, local_ratio: float,
                 local_kernel_sizes: Sequence[int], global_kernel_size: int,
                 ssm_ratio: float = 2.0, norm_cfg: Optional[dict] = None,
                 scan_backend: str = 'auto') -> None:
        super().__init__()
        self.splits = split_channels(channels, global_ratio, local_ratio)
        global_ch, local_ch, _ = self.splits
        self.global_branch = WTEMamba(global_ch, global_kernel_size, ssm_ratio=ssm_ratio,
                                      norm_cfg=norm_cfg, scan_backend=scan_backend) \
            if global_ch > 0 else None
        self.local_branch = MKDeConv(local_ch, local_kernel_sizes, norm_cfg=norm_cfg) \
            if local_ch > 0 else None
        self.act = nn.ReLU(inplace=True)
        self.proj = ConvBN(channels, channels, bn_weight_init=0.0, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mixer's output, plus ``residual`` if given (added by the projection's fused
        norm on the Triton path, else in place)."""
        x_global, x_local, x_identity = channel_slices(x, self.splits)
        parts = []
        if self.global_branch is not None:
            parts.append(self.global_branch(x_global))
        if self.local_branch is not None:
            parts.append(self.local_branch(x_local))
        if x_identity.shape[1]:
            parts.append(x_identity)
        return self.proj.forward_fused(self.act(torch.cat(parts, dim=1)), residual=residual)


class MobileMambaBlock(nn.Module):
    """dw conv -> FFN -> MRFFI -> dw conv -> FFN, each residual, then ``x + DropPath(y)``.

    The outer residual adds the block input to a sum that already contains it, as in the
    released model.

    Args:
        channels (int): channels.
        global_ratio (float): MRFFI global share.
        local_ratio (float): MRFFI local share.
        local_kernel_sizes (Sequence[int]): MK-DeConv kernels.
        global_kernel_size (int): wavelet-domain conv kernel.
        ssm_ratio (float): SS2D inner width ratio.
        drop_path (float): stochastic depth rate of this block.
        norm_cfg (dict, optional): norm layer config.
        scan_backend (str): the custom ops' implementation (see :class:`MobileMamba`).
    """

    def __init__(self, channels: int, global_ratio: float, local_ratio: float,
                 local_kernel_sizes: Sequence[int], global_kernel_size: int,
                 ssm_ratio: float = 2.0, drop_path: float = 0.0,
                 norm_cfg: Optional[dict] = None, scan_backend: str = 'auto') -> None:
        super().__init__()
        self.dw0 = ResidualDWConv(channels, bn_weight_init=0.0, norm_cfg=norm_cfg)
        self.ffn0 = ResidualFFN(channels, 2 * channels, norm_cfg=norm_cfg)
        self.mixer = MRFFI(channels, global_ratio, local_ratio, local_kernel_sizes,
                           global_kernel_size, ssm_ratio, norm_cfg, scan_backend)
        self.dw1 = ResidualDWConv(channels, bn_weight_init=0.0, norm_cfg=norm_cfg)
        self.ffn1 = ResidualFFN(channels, 2 * channels, norm_cfg=norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ffn0(self.dw0(x))
        y = self.mixer(y, residual=y)
        # x + drop_path(ffn1(y)): one op with the FFN's last norm on the Triton path
        return self.ffn1(self.dw1(y), drop_path=self.drop_path, outer=x)


class PatchMerging(nn.Module):
    """Stride-2 inverted bottleneck with squeeze-excite: 1x1 up, 3x3/2 depthwise, SE, 1x1 out.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        norm_cfg (dict, optional): norm layer config.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        hidden = 4 * in_channels
        self.conv1 = ConvBN(in_channels, hidden, norm_cfg=norm_cfg)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden, norm_cfg=norm_cfg)
        self.act2 = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(hidden, rd_ratio=0.25)
        self.conv3 = ConvBN(hidden, out_channels, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relus = isinstance(self.act1, nn.ReLU) and isinstance(self.act2, nn.ReLU)
        if relus and fuses_frozen_bn(self.conv1.scan_backend, x, self.conv1.bn, self.conv2.bn):
            x = self.conv2.forward_fused(self.conv1.forward_fused(x, relu=True), relu=True)
        else:
            x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.conv3(self.se(x))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold the norms; the ReLUs run fused in the convs before them."""
        for conv in (self.conv1, self.conv2, self.conv3):
            conv.switch_to_deploy()
        fuse_activation(self.conv1, self, 'act1', 'relu')
        fuse_activation(self.conv2, self, 'act2', 'relu')
        # the squeeze-excite's 1x1 convs on the pooled vector: matrix-vector products on CPU
        self.se.fc1 = InferenceConv2d.from_conv(self.se.fc1)
        self.se.fc2 = InferenceConv2d.from_conv(self.se.fc2)


class Downsample(nn.Module):
    """Residual dw conv + FFN at ``in_channels``, patch merging, residual dw conv + FFN.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels (stride 2).
        norm_cfg (dict, optional): norm layer config.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.pre_dw = ResidualDWConv(in_channels, norm_cfg=norm_cfg)
        self.pre_ffn = ResidualFFN(in_channels, 2 * in_channels, norm_cfg=norm_cfg)
        self.merge = PatchMerging(in_channels, out_channels, norm_cfg=norm_cfg)
        self.post_dw = ResidualDWConv(out_channels, norm_cfg=norm_cfg)
        self.post_ffn = ResidualFFN(out_channels, 2 * out_channels, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(self.pre_ffn(self.pre_dw(x)))
        return self.post_ffn(self.post_dw(x))


class MobileMambaStage(nn.Module):
    """An optional :class:`Downsample` followed by ``depth`` :class:`MobileMambaBlock` s."""

    def __init__(self, in_channels: int, channels: int, depth: int, drop_paths: Sequence[float],
                 downsample: bool, with_cp: bool = False, **block_kwargs) -> None:
        super().__init__()
        self.downsample = Downsample(in_channels, channels, block_kwargs.get('norm_cfg')) \
            if downsample else None
        self.blocks = nn.Sequential(*[
            MobileMambaBlock(channels, drop_path=drop_paths[i], **block_kwargs)
            for i in range(depth)
        ])
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def _resolve_arch(arch: Union[str, dict]) -> dict:
    """Validate ``arch`` (a released name or a dict) and return a full settings dict."""
    if isinstance(arch, str):
        key = arch.lower()
        if key not in ARCH_SETTINGS:
            raise ValueError(f'MobileMamba: unknown arch {arch!r}; valid names are '
                             f'{sorted(ARCH_SETTINGS)} or a dict with keys {list(_STAGE_KEYS)} '
                             '(and optional ssm_ratio)')
        return copy.deepcopy(ARCH_SETTINGS[key])
    if not isinstance(arch, dict):
        raise ValueError(f'MobileMamba: arch must be a name in {sorted(ARCH_SETTINGS)} or a dict, '
                         f'got {type(arch).__name__}')
    missing = [k for k in _STAGE_KEYS if k not in arch]
    unknown = [k for k in arch if k not in _STAGE_KEYS + ('ssm_ratio', 'drop_path_rate')]
    if missing or unknown:
        raise ValueError(f'MobileMamba: arch dict missing keys {missing}, unknown keys {unknown}; '
                         f'required: {list(_STAGE_KEYS)}, optional: ssm_ratio, drop_path_rate')
    settings = dict(ssm_ratio=2, drop_path_rate=0.0)
    settings.update(arch)
    lengths = {k: len(settings[k]) for k in _STAGE_KEYS}
    if set(lengths.values()) != {3}:
        raise ValueError(f'MobileMamba: each of {list(_STAGE_KEYS)} needs 3 values (one per '
                         f'stage); got lengths {lengths}')
    return settings


def _resolve_out_indices(out_indices: Union[int, Sequence[int]],
                         num_stages: int) -> Tuple[int, ...]:
    """Validate ``out_indices`` (an int or a sequence of stage indices) and return a tuple."""
    out_indices = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else (out_indices,)
    bad = [i for i in out_indices if not isinstance(i, int) or not 0 <= i < num_stages]
    if bad or not out_indices:
        raise ValueError(f'MobileMamba: out_indices {out_indices} invalid; valid stage '
                         f'indices are 0, 1, 2 (strides 16, 32, 64)')
    return out_indices


@register_model()
class MobileMamba(BaseModule):
    """MobileMamba backbone: stride-16 stem, three stages at strides 16, 32 and 64.

    Args:
        arch (str | dict): 't2', 't4', 's6', 'b1', 'b2', 'b4', or a dict with ``embed_dims``,
            ``depths``, ``global_ratios``, ``local_ratios``, ``kernel_sizes`` (3 values each)
            and optional ``ssm_ratio`` (default 2). Default: 'b1'.
        out_indices (Sequence[int]): stages whose outputs are returned (0, 1, 2 = strides 16, 32,
            64). Stages after the last one listed are not built (SSDLite's ``(0, 1)`` has no
            third stage: no unused parameters, which DDP rejects, and no wasted compute);
            their weights in a checkpoint are skipped with a log line. Default: (0, 1, 2).
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and stages 0..k
            (parameters fixed, norm layers in eval mode, also after ``train()``). Default: -1.
        norm_eval (bool): keep every BatchNorm in eval mode during training (frozen
            statistics), as the detection configs do. Default: False.
        with_cp (bool): activation checkpointing per block: less memory, same gradients.
            Default: False.
        drop_path_rate (float, optional): stochastic depth rate, linear from 0 over the blocks;
            None takes the release's value for ``arch`` (0.03 for B1-B4, else 0).
        local_kernel_sizes (Sequence[Sequence[int]], optional): per stage, the MK-DeConv kernels
            (the paper's multi-kernel split, e.g. ``((3, 5, 7), (3, 5), (3,))``). None uses the
            release layout: one kernel per stage, ``kernel_sizes`` of ``arch``.
        norm_cfg (dict): config of the BatchNorm layers (e.g. ``dict(type='SyncBN')``).
            Default: ``dict(type='BN', requires_grad=True)``.
        scan_backend (str): the implementation of every custom op: the scans, the fused
            layers (SS2D's gated norm, WTE-Mamba's inverse transform) and the frozen
            BatchNorms fused with what follows them. 'auto' (default): Triton's kernels on
            CUDA (a warning, once, if Triton does not import: then the PyTorch twins run),
            the PyTorch twins and plain modules elsewhere; 'triton': the kernels anywhere
            (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``: the whole CUDA code
            path on a CPU); 'torch': the twins; 'reference' / 'cuda' / 'export': the scan's
            sequential twin / mamba_ssm's kernel / the ONNX-exportable scan (see
            :class:`~mmmobilemamba.models.layers.SS2D`). Every layer of the model takes it.
        channels_last (bool, optional): compute in channels-last (NHWC) memory. None (default)
            does so on CPU, where oneDNN's convolutions are faster in NHWC and the selective
            scan reads a flattened NHWC map without transposes, but not under
            ``torch.compile``; the CUDA deploy form takes :data:`CUDA_FORM_CHANNELS_LAST`;
            False keeps NCHW. An internal choice: the results are the same and the returned
            maps are NCHW-contiguous.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads a released classification checkpoint, a downstream mmdet/mmseg checkpoint
            (``backbone.`` keys) or our own format, reporting what was loaded.

    State dicts in the authors' layout (their classification release, or the backbone of
    their detectors and segmentors) load directly: ``load_state_dict`` maps their keys to ours
    first (:meth:`adapt_state_dict_keys`).
    """

    def __init__(self, arch: Union[str, dict] = 'b1', out_indices: Sequence[int] = (0, 1, 2),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 drop_path_rate: Optional[float] = None,
                 local_kernel_sizes: Optional[Sequence[Sequence[int]]] = None,
                 norm_cfg: Optional[dict] = None, scan_backend: str = 'auto',
                 channels_last: Optional[bool] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if channels_last not in (None, True, False):
            raise ValueError(f'MobileMamba: channels_last must be None (on CPU), True or False, '
                             f'got {channels_last!r}')
        self.channels_last = channels_last
        self.deployed = None  # or the device type of the deploy form (switch_to_deploy)
        settings = _resolve_arch(arch)
        self.arch_settings = settings
        dims = tuple(settings['embed_dims'])
        depths = tuple(settings['depths'])
        num_stages = len(dims)
        out_indices = _resolve_out_indices(out_indices, num_stages)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages < num_stages:
            raise ValueError(f'MobileMamba: frozen_stages must be -1 (none) or 0..{num_stages - 1}, '
                             f'got {frozen_stages}')
        if local_kernel_sizes is None:
            local_kernel_sizes = [(k,) for k in settings['kernel_sizes']]
        if len(local_kernel_sizes) != num_stages:
            raise ValueError(f'MobileMamba: local_kernel_sizes needs one tuple per stage '
                             f'({num_stages}), got {local_kernel_sizes}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        if drop_path_rate is None:
            drop_path_rate = settings['drop_path_rate']
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        c0 = dims[0]
        self.patch_embed = nn.Sequential(
            ConvBN(3, c0 // 8, 3, 2, 1, norm_cfg=self.norm_cfg), nn.ReLU(inplace=True),
            ConvBN(c0 // 8, c0 // 4, 3, 2, 1, norm_cfg=self.norm_cfg), nn.ReLU(inplace=True),
            ConvBN(c0 // 4, c0 // 2, 3, 2, 1, norm_cfg=self.norm_cfg), nn.ReLU(inplace=True),
            ConvBN(c0 // 2, c0, 3, 2, 1, norm_cfg=self.norm_cfg))
        self.stages = nn.ModuleList()
        for i in range(max(out_indices) + 1):
            first = sum(depths[:i])
            self.stages.append(MobileMambaStage(
                dims[i - 1] if i else c0, dims[i], depths[i], rates[first:first + depths[i]],
                downsample=i > 0, with_cp=with_cp,
                global_ratio=settings['global_ratios'][i], local_ratio=settings['local_ratios'][i],
                local_kernel_sizes=tuple(local_kernel_sizes[i]),
                global_kernel_size=settings['kernel_sizes'][i], ssm_ratio=settings['ssm_ratio'],
                norm_cfg=self.norm_cfg, scan_backend=scan_backend))
        self.out_channels = [dims[i] for i in out_indices]
        # one setting for every custom op of the model: the scans' and the fused norms'
        for module in self.modules():
            if hasattr(module, 'scan_backend'):
                module.scan_backend = scan_backend
        self.feature_info = [
            dict(num_chs=dims[i], reduction=16 * 2**i, module=f'stages.{i}')
            for i in range(len(self.stages))
        ]
        self._freeze_stages()

    # ----------------------------------------------------------------- training state
    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed] + list(self.stages[:self.frozen_stages + 1])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MobileMamba':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ----------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Load ``init_cfg`` 'Pretrained' checkpoints with a report; other inits as mmengine."""
        from ..checkpoint import load_backbone_checkpoint, pretrained_path
        path = pretrained_path(self.init_cfg)
        if path is None:
            if not (isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained'):
                super().init_weights()  # e.g. Kaiming/TruncNormal init_cfgs
            self._is_init = True
            return
        prefix = self.init_cfg.get('prefix') if isinstance(self.init_cfg, dict) else None
        load_backbone_checkpoint(self, path, prefix=prefix)
        self._is_init = True

    def adapt_state_dict_keys(self, state_dict: Dict[str, torch.Tensor], prefix: str = '',
                              log: bool = True) -> None:
        """Bring the keys under ``prefix`` of ``state_dict`` to this backbone's layout, in place.

        The authors' layout is renamed (their wavelet filters, fixed Haar filters rebuilt here,
        are dropped) and the weights of stages this backbone does not build are removed, with
        a log line. Called by ``load_state_dict`` (also mmengine's ``load_checkpoint``, hence
        ``load_from``, ``tools/test.py`` and the inferencers) before the weights are copied.

        Args:
            state_dict (dict): the state dict being loaded; modified in place.
            prefix (str): this module's prefix in it, e.g. ``'backbone.'``.
            log (bool): log what was renamed or dropped. Default: True.
        """
        from ..checkpoint import convert_backbone_keys, drop_unbuilt_stages
        converted = convert_backbone_keys(state_dict, prefix)
        converted, dropped = drop_unbuilt_stages(converted, len(self.stages), prefix)
        if converted.keys() == state_dict.keys():
            return
        if log:
            renamed = len(set(converted) - set(state_dict))
            if renamed:
                print_log(f'MobileMamba: {renamed} tensors under {prefix!r} mapped from the '
                          'authors\' layout', logger='current')
            if dropped:
                print_log(f'MobileMamba: skipped the checkpoint\'s stage(s) {dropped}: not '
                          f'built with out_indices={self.out_indices}', logger='current')
        state_dict.clear()
        state_dict.update(converted)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.adapt_state_dict_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def switch_to_deploy(self, device: Optional[Union[str, torch.device]] = None) -> 'MobileMamba':
        """Fold every conv+BN, residual depthwise identity and learned scale for inference, in
        the form that is fast on ``device``.

        * CPU form: the folded convolutions are :class:`InferenceConv2d` (weights packed for
          oneDNN once, ReLU/SiLU fused) and WTE-Mamba's wavelet pair becomes one grouped conv
          on the polyphase components of its input.
        * CUDA form: no grouped conv with more than one input channel per group (cuDNN runs
          those one group at a time) and no layout round trips: the wavelet transform and its
          conv are one depthwise conv and the inverse is added by one fused op; the model
          computes NCHW, where SS2D's norm, gate and layout change are one op after its scan
          (Triton kernels on CUDA, their PyTorch twins elsewhere, so the form also runs and is
          tested on CPU).

        * Export form (``device='export'``: ONNX, ExecuTorch): NCHW maps and plain ops that
          graph runtimes run fast and XNNPACK delegates: the wavelet transform, its conv and
          the inverse as three convs, SS2D's scan as a fixed set of large ops
          (``scan_backend='export'``, :mod:`mmmobilemamba.ops.scan_chunked`), its LayerNorm's
          means as convs, no custom op.

        All compute what the unfused model computes in eval mode. Irreversible.

        Args:
            device (str | torch.device, optional): the device type to build the form for
                ('cpu' or 'cuda'), or 'export'; None takes the device of the model's parameters
                (or keeps the form of a model folded before).

        Returns:
            MobileMamba: ``self``.
        """
        if device is None and self.deployed is not None:
            return self  # folded before (e.g. for export): nothing left to fold
        if device is None:
            device = next(self.parameters()).device
        device_type = device if device == 'export' else torch.device(device).type
        if device_type not in DEPLOY_FORMS:
            raise ValueError(f"MobileMamba.switch_to_deploy: device must be one of {DEPLOY_FORMS} "
                             f'(the forms there are), got {device!r}')
        if self.deployed not in (None, device_type):
            raise RuntimeError(f'MobileMamba.switch_to_deploy: already deployed for '
                               f'{self.deployed!r}; build the model again for {device_type!r}')
        self.eval()
        # children before parents: parents fold scales into already-fused convs
        for module in reversed(list(self.modules())):
            if module is not self and hasattr(module, 'switch_to_deploy'):
                if 'device_type' in inspect.signature(module.switch_to_deploy).parameters:
                    module.switch_to_deploy(device_type=device_type)
                else:
                    module.switch_to_deploy()
        for i in range(1, len(self.patch_embed), 2):  # stem: ConvBN, ReLU, ConvBN, ...
            fuse_activation(self.patch_embed[i - 1], self.patch_embed, str(i), 'relu')
        self.deployed = device_type
        return self

    # ----------------------------------------------------------------- forward
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding: ConvBN, ReLU, ... (each norm and its ReLU one op when the
        norms are frozen on the Triton path)."""
        layers = list(self.patch_embed)
        i = 0
        while i < len(layers):
            if (isinstance(layers[i], ConvBN) and i + 1 < len(layers)
                    and isinstance(layers[i + 1], nn.ReLU)):
                x = layers[i].forward_fused(x, relu=True)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'MobileMamba expects (N, 3, H, W) images, got {tuple(x.shape)}')
        channels_last = self.channels_last
        if channels_last is None:
            if self.deployed == 'cuda':
                channels_last = CUDA_FORM_CHANNELS_LAST
            elif self.deployed == 'export':  # NCHW throughout, as graph runtimes take it
                channels_last = False
            else:  # for oneDNN in eager mode; compiled, inductor picks layouts
                channels_last = x.device.type == 'cpu' and not torch.compiler.is_compiling()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self._stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                # heads and necks may .view() their inputs: hand them NCHW-contiguous maps
                outs.append(x.contiguous())
        return tuple(outs)
