"""WTE-Mamba: the global branch of MobileMamba's MRFFI (SS2D plus a wavelet-domain conv)."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmobilemamba.ops import (channels_innermost, from_polyphase, inverse_wavelet_transform,
                               to_polyphase, wavelet_domain_kernel, wavelet_filters,
                               wavelet_transform)
from mmmobilemamba.ops.fused_ops import haar_inverse_add
from mmmobilemamba.ops.selective_scan import custom_op_backend
from mmmobilemamba.ops.wavelet import pad_to_even
from .inference_conv import InferenceConv2d
from .ss2d import SS2D

__all__ = ['WTEMamba']


class WTEMamba(nn.Module):
    """``s * SS2D(x) + IWT(t * DWConv_k(WT(x)))``.

    The Haar sub-bands carry the high-frequency (edge) detail that the scan smooths over; the
    depthwise conv on them enlarges the receptive field at half resolution.

    Args:
        channels (int): channels ``g`` of the global group.
        kernel_size (int): kernel of the depthwise conv on the 4g sub-band channels.
        ssm_ratio (float): inner width ratio of the SS2D. Default: 2.
        wavelet (str): a ``pywt`` wavelet name. Default: 'db1' (Haar).
        norm_cfg (dict, optional): norm of the SS2D projections.
        scan_backend (str): the implementation of the custom ops, SS2D's scan and the fused
            inverse transform (see :class:`SS2D`). Default: 'auto'.
    """

    def __init__(self, channels: int, kernel_size: int, ssm_ratio: float = 2.0,
                 wavelet: str = 'db1', norm_cfg: Optional[dict] = None,
                 scan_backend: str = 'auto') -> None:
        super().__init__()
        self.ss2d = SS2D(channels, ssm_ratio=ssm_ratio, norm_cfg=norm_cfg,
                         scan_backend=scan_backend)
        self.ssm_scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.wavelet_conv = nn.Conv2d(4 * channels, 4 * channels, kernel_size,
                                      padding=kernel_size // 2, groups=4 * channels, bias=False)
        self.wavelet_scale = nn.Parameter(torch.full((1, 4 * channels, 1, 1), 0.1))
        dec, rec = wavelet_filters(channels, wavelet)
        # fixed, rebuilt from pywt: not trained and not stored in checkpoints
        self.register_buffer('wt_filter', dec, persistent=False)
        self.register_buffer('iwt_filter', rec, persistent=False)
        self.scales_folded = False
        self.polyphase = False
        self.haar_folded = False
        self.graph_form = False  # export form: transform, conv, inverse as three plain convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        global_out = self.ss2d(x)
        if self.graph_form:
            return global_out + self._wavelet_branch_graph(x)
        if self.polyphase:  # deployed, two-tap wavelet: WT, conv, scale and IWT in one conv
            return global_out + from_polyphase(self.wavelet_conv(to_polyphase(x)), (h, w))
        if self.haar_folded:  # CUDA deploy form: WT + conv + scale as one depthwise conv
            bands = self.wavelet_conv(pad_to_even(x))                     # (B, 4C, h/2, w/2)
            return haar_inverse_add(bands, global_out, self.iwt_filter,
                                    backend=self._kernels(x.device))
        bands = wavelet_transform(x, self.wt_filter)                  # (B, C, 4, h/2, w/2)
        bands = self.wavelet_conv(bands.reshape(b, 4 * c, *bands.shape[-2:]))
        backend = self._kernels(x.device)
        if self.iwt_filter.shape[-2:] == (2, 2) and (backend == 'triton'
                                                     or not channels_innermost(bands)):
            # the GPU path in either layout, and NCHW anywhere (compiled): both scales, the
            # inverse and the sum as one op
            scales = (None, None) if self.scales_folded else \
                (self.wavelet_scale.view(-1), self.ssm_scale.view(-1))
            return haar_inverse_add(bands, global_out, self.iwt_filter, *scales,
                                    backend=backend)
        if not self.scales_folded:
            bands = bands * self.wavelet_scale
            global_out = global_out * self.ssm_scale
        bands = bands.reshape(b, c, 4, *bands.shape[-2:])
        return global_out + inverse_wavelet_transform(bands, self.iwt_filter, (h, w))

    def _wavelet_branch_graph(self, x: torch.Tensor) -> torch.Tensor:
        """The export form of ``IWT(t * DWConv(WT(x)))`` (scale folded into the conv): the
        transform as a stride-2 conv with four outputs per channel, the depthwise conv on the
        sub-bands, the inverse as a stride-2 transposed conv: three conv modules that
        onnxruntime runs fast and that a runtime's rewrite may replace (XNNPACK's,
        :mod:`mmmobilemamba.deploy.xnnpack_rewrites`; the polyphase grouped conv of the CPU
        form, 4 channels per group, takes onnxruntime ~10x as long; the CUDA form's inverse
        is a custom op)."""
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # static shapes when exported: no pad op for even maps
            x = F.pad(x, (0, w % 2, 0, h % 2))
        out = self.wavelet_inverse(self.wavelet_conv(self.wavelet_forward(x)))
        return out[..., :h, :w] if out.shape[-2:] != (h, w) else out

    def _build_graph_form(self) -> None:
        """The export form's transform pair as conv modules holding the fixed filters
        (``wavelet_forward``: ``C -> 4C``, stride 2, grouped per channel; ``wavelet_inverse``:
        its transposed twin ``4C -> C``)."""
        filters = self.wt_filter
        channels, kernel = filters.shape[0] // 4, tuple(filters.shape[-2:])
        pad = (kernel[0] // 2 - 1, kernel[1] // 2 - 1)
        options = dict(stride=2, padding=pad, groups=channels, bias=False,
                       device=filters.device, dtype=self.wavelet_conv.weight.dtype)
        forward = nn.Conv2d(channels, 4 * channels, kernel, **options)
        inverse = nn.ConvTranspose2d(4 * channels, channels, kernel, **options)
        forward.weight.copy_(filters)
        inverse.weight.copy_(self.iwt_filter)
        self.wavelet_forward = forward.requires_grad_(False)
        self.wavelet_inverse = inverse.requires_grad_(False)

    def _kernels(self, device: torch.device) -> str:
        """The fused op's implementation, 'triton' or 'torch', as SS2D's ``scan_backend``
        chooses it on ``device`` (one setting for every custom op of the module)."""
        return custom_op_backend(self.ss2d.scan_backend, device)

    @torch.no_grad()
    def switch_to_deploy(self, device_type: str = 'cpu') -> None:
        """Fold both learned scales into the convs before them (after their BN fusion).

        With a two-tap wavelet (Haar) the transform pair around the wavelet-domain conv folds
        too, per device:

        * 'cpu': into one grouped conv on the 2x2 polyphase components of the input
          (:func:`mmmobilemamba.ops.wavelet_domain_kernel`), fast in oneDNN;
        * 'cuda': the transform and the conv into one stride-2 depthwise conv with four
          outputs per channel (a ``2k x 2k`` kernel), and the inverse into the fused
          ``haar_inverse_add`` op: cuDNN runs a grouped conv with several input channels per
          group one group at a time, a depthwise one in one kernel.
        * 'export' (graph runtimes: ONNX, ExecuTorch): the transform, the scaled depthwise
          conv and the inverse are three conv modules (:meth:`_wavelet_branch_graph`), any
          wavelet.

        Args:
            device_type (str): 'cpu', 'cuda' or 'export': where the form is fast. Default:
                'cpu'.
        """
        if self.scales_folded:
            return
        self.ss2d.out_proj.switch_to_deploy()
        out_conv = self.ss2d.out_proj.conv
        scale = self.ssm_scale.view(-1)
        out_conv.weight.mul_(scale.view(-1, 1, 1, 1))
        out_conv.bias.mul_(scale)
        conv = self.wavelet_conv
        conv.weight.mul_(self.wavelet_scale.view(-1, 1, 1, 1))
        if device_type == 'export':
            self._build_graph_form()
            self.graph_form = self.scales_folded = True
            return
        if self.wt_filter.shape[-2:] == (2, 2) and device_type == 'cuda':
            self.wavelet_conv = self._haar_depthwise_conv(conv.weight)
            self.haar_folded = self.scales_folded = True
            return
        if self.wt_filter.shape[-2:] == (2, 2):
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                               padding=conv.padding, groups=conv.in_channels // 4, bias=False,
                               device=conv.weight.device, dtype=conv.weight.dtype)
            folded.weight.copy_(wavelet_domain_kernel(self.wt_filter, self.iwt_filter,
                                                      conv.weight))
            conv, self.polyphase = folded, True
        self.wavelet_conv = InferenceConv2d.from_conv(conv)
        self.scales_folded = True

    def _haar_depthwise_conv(self, weight: torch.Tensor) -> nn.Conv2d:
        """``conv(WT(x))`` as one conv on ``x``: stride 2, ``2k x 2k`` kernel, four outputs per
        input channel (depthwise with multiplier 4).

        Band ``j`` of channel ``c`` at ``p`` is ``sum_q K[q] sum_r T_j[r] x[2(p + q) + r]`` with
        ``T_j`` the 2x2 Haar taps: a stride-2 conv whose tap ``2q + r`` is ``K[q] T_j[r]``.
        """
        channels = weight.shape[0] // 4
        kh, kw = weight.shape[-2:]
        taps = self.wt_filter.view(4 * channels, 2, 2).to(weight)
        kernel = torch.einsum('nab,nij->naibj', weight[:, 0].double(), taps.double())
        conv = nn.Conv2d(channels, 4 * channels, (2 * kh, 2 * kw), stride=2,
                         padding=(2 * (kh // 2), 2 * (kw // 2)), groups=channels, bias=False,
                         device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(kernel.reshape(4 * channels, 1, 2 * kh, 2 * kw).to(weight.dtype))
        return conv
