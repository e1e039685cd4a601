"""SS2D: the bidirectional 2-D selective scan of MobileMamba (d_state 1, two directions)."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmobilemamba.ops import (memory_format_of, selective_scan, selective_scan_channels_last,
                               ss2d_scan)
from mmmobilemamba.ops.fused_ops import gated_layer_norm
from mmmobilemamba.ops.selective_scan import resolve_backend
from .conv_bn import ConvBN
from .inference_conv import InferenceConv2d

__all__ = ['SS2D']


class SS2D(nn.Module):
    """Selective scan over the row-major flattened map, forwards and backwards.

    Parameter names follow the VMamba/MobileMamba release (``x_proj_weight``, ``dt_projs_*``,
    ``A_logs``, ``Ds``) so released weights load by name.

    Args:
        channels (int): input/output channels ``d``.
        ssm_ratio (float): inner width ``D = ssm_ratio * d``. Default: 2.
        d_state (int): state size ``N``. Default: 1.
        dt_rank (int, optional): rank of the step-size projection; ``ceil(d / 16)`` if None.
        directions (int): scan directions ``K`` (forward and reversed). Default: 2.
        norm_cfg (dict, optional): norm of the in/out projections (BatchNorm by default).
        scan_backend (str): 'auto', 'torch', 'export' (see
            :func:`mmmobilemamba.ops.selective_scan_channels_last`), 'reference' or 'cuda'
            (see :func:`mmmobilemamba.ops.selective_scan`).
    """

    def __init__(self, channels: int, ssm_ratio: float = 2.0, d_state: int = 1,
                 dt_rank: Optional[int] = None, directions: int = 2,
                 norm_cfg: Optional[dict] = None, scan_backend: str = 'auto') -> None:
        super().__init__()
        if directions != 2:
            raise ValueError(f'SS2D supports directions=2 (forward + reversed), got {directions}')
        inner = int(ssm_ratio * channels)
        self.inner_channels = inner
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(channels / 16)
        self.directions = directions
        self.scan_backend = scan_backend

        self.in_proj = ConvBN(channels, 2 * inner, norm_cfg=norm_cfg)
        self.conv2d = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=True)
        self.act = nn.SiLU()
        k = directions
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.A_logs = nn.Parameter(torch.zeros(k * inner, d_state))
        self.Ds = nn.Parameter(torch.ones(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = ConvBN(inner, channels, norm_cfg=norm_cfg)
        self.fused_norm_gate = False  # the CUDA deploy form's gated_layer_norm op
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """The release's "v2" initialisation of the SSM parameters."""
        bound = 1.0 / math.sqrt(self.inner_channels)  # nn.Linear(D, R + 2N)'s default
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(0.0, 0.1)
        self.dt_projs_bias.uniform_(0.0, 0.1)
        self.A_logs.zero_()
        self.Ds.fill_(1.0)

    def _scan_fused(self, u: torch.Tensor, backend: str) -> torch.Tensor:
        """(B, D, H, W) -> (B, L, D) float32: both directions by one :func:`ss2d_scan` op
        (one kernel on CUDA), reading the map and the projections where they are.

        The projections act per token, so the reversed direction is the backward scan of the
        unflipped tokens with their own projections: no flips and no concatenation. They are
        matrix products over the channels of the (B, D, L) view of the map, whatever its
        memory format.
        """
        b, d, h, w = u.shape
        k, r, n = self.directions, self.dt_rank, self.d_state
        length = h * w
        seq = u.flatten(2)                                                   # (B, D, L)
        # batched products (bmm): FLOP counters count them exactly
        proj = torch.bmm(self.x_proj_weight.view(1, k * (r + 2 * n), d).expand(b, -1, -1), seq)
        proj = proj.view(b, k, r + 2 * n, length)                           # (B, K, R+2N, L)
        delta = torch.bmm(self.dt_projs_weight.expand(b, k, d, r).reshape(b * k, d, r),
                          proj[:, :, :r].reshape(b * k, r, length)).view(b, k, d, length)
        return ss2d_scan(seq, delta, self.A_logs, proj[:, :, r:r + n],
                         proj[:, :, r + n:], self.Ds, self.dt_projs_bias.view(-1),
                         backend=backend)

    def _scan_channels_last(self, u: torch.Tensor, backend: str = 'torch') -> torch.Tensor:
        """(B, D, H, W) -> (B, L, D): both directions as one token-major scan.

        The projections act per token, so the reversed direction is the forward scan of the
        flipped sequence, flipped back; the two directions are the two channel groups of one
        scan over ``[x, flip(x)]`` (2D channels, each group with its own B/C and weights):
        half the scan steps and elementwise passes of two scans. With a channels-last ``u``
        the flattened map is already token-major.
        """
        b, d, h, w = u.shape
        k, r, n = self.directions, self.dt_rank, self.d_state
        length = h * w
        seq = u.flatten(2).transpose(1, 2)                               # (B, L, D)
        both = torch.cat([seq, seq.flip(1)], dim=2)                      # (B, L, K*D)
        # each direction's projections on its own channels (batched over directions)
        per_direction = both.view(b * length, k, d).transpose(0, 1)      # (K, B*L, D)
        proj = torch.bmm(per_direction, self.x_proj_weight.transpose(1, 2))  # (K, B*L, R+2N)
        delta = torch.bmm(proj[..., :r], self.dt_projs_weight.transpose(1, 2))  # (K, B*L, D)
        delta = delta.transpose(0, 1).reshape(b, length, k * d)
        bs, cs = proj[..., r:].transpose(0, 1).reshape(b, length, k, 2 * n).split([n, n], -1)
        y = selective_scan_channels_last(
            both, delta, -torch.exp(self.A_logs.float()), bs, cs, self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True,
            backend=backend).view(b, length, k, d)
        forward, backward = y.unbind(2)
        return backward.flip(1).add_(forward) if not y.requires_grad \
            else forward + backward.flip(1)

    def _scan(self, u: torch.Tensor, backend: str = 'reference') -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H, W): both directions scanned, summed (reference layout)."""
        b, d, h, w = u.shape
        length = h * w
        seq = u.flatten(2)
        xs = torch.stack([seq, seq.flip(-1)], dim=1)                     # (B, K, D, L)
        proj = torch.einsum('bkdl,kcd->bkcl', xs, self.x_proj_weight)    # (B, K, R+2N, L)
        dts, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum('bkrl,kdr->bkdl', dts, self.dt_projs_weight)  # (B, K, D, L)
        k = self.directions
        ys = selective_scan(
            xs.reshape(b, k * d, length), dts.reshape(b, k * d, length),
            -torch.exp(self.A_logs.float()), Bs, Cs, self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True,
            backend=backend).view(b, k, d, length)
        return (ys[:, 0] + ys[:, 1].flip(-1)).view(b, d, h, w)

    @torch.no_grad()
    def switch_to_deploy(self, device_type: str = 'cpu') -> None:
        """Fold the projections' norms; the SiLU runs fused in the depthwise conv.

        Args:
            device_type (str): 'cuda' also has the LayerNorm, the gate and the layout change
                after the scan run as one op (``gated_layer_norm``). Default: 'cpu'.
        """
        self.in_proj.switch_to_deploy()
        self.out_proj.switch_to_deploy()
        if not isinstance(self.act, nn.Identity):
            self.conv2d = InferenceConv2d.from_conv(self.conv2d, 'silu')
            self.act = nn.Identity()
        if device_type == 'cuda':
            self.fused_norm_gate = True

    def _forward_fused_norm_gate(self, u: torch.Tensor, z: torch.Tensor,
                                 backend: str) -> torch.Tensor:
        """The CUDA deploy form after the depthwise conv: scan, then norm x gate in one op."""
        y = self._scan_fused(u, backend)                                  # (B, L, D) float32
        kernels = resolve_backend('auto', u.device, mamba_ssm=False)
        y = gated_layer_norm(y, z, self.out_norm.weight, self.out_norm.bias, self.out_norm.eps,
                             kernels)
        return self.out_proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=1)
        u = self.act(self.conv2d(u))
        b, d, h, w = u.shape
        backend = resolve_backend(self.scan_backend, u.device)
        if self.fused_norm_gate and backend in ('torch', 'triton'):
            return self._forward_fused_norm_gate(u, z, backend)
        if backend in ('torch', 'triton', 'export'):
            if backend == 'export':  # plain ops that a tracer records
                y = self._scan_channels_last(u, backend)
            else:
                y = self._scan_fused(u, backend)
                if not torch.is_autocast_enabled(u.device.type):  # else LayerNorm takes float32
                    y = y.to(u.dtype)
            y = self.out_norm(y)                                       # LayerNorm over D, as is
            y = y.view(b, h, w, d).permute(0, 3, 1, 2)                # (B, D, H, W), NHWC memory
        else:
            # LayerNorm over channels, done channels-last
            y = self.out_norm(self._scan(u, backend).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # back to the memory format of the input for the convolution
        gate = F.silu(z)
        y = y.mul_(gate) if not y.requires_grad else y * gate
        y = y.contiguous(memory_format=memory_format_of(x))
        return self.out_proj(y)

