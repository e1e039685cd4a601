"""SS2D: the bidirectional 2-D selective scan of MobileMamba (d_state 1, two directions)."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmobilemamba.ops import (channels_innermost, memory_format_of, selective_scan,
                               selective_scan_channels_last, ss2d_scan)
from mmmobilemamba.ops.fused_ops import gated_layer_norm
from mmmobilemamba.ops.graph_scan_op import ss2d_scan_graph_op
from mmmobilemamba.ops.scan_chunked import ss2d_scan_graph
from mmmobilemamba.ops.selective_scan import resolve_backend
from .conv_bn import ConvBN
from .inference_conv import InferenceConv2d

__all__ = ['SS2D', 'GraphScan']


def _left_product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight @ x`` for ``weight (G, M, N)`` and ``x (G, N, L)`` (one image) or ``(..., G,
    N, L)``: a batched matrix product, which XNNPACK delegates with either operand constant."""
    return torch.bmm(weight, x) if x.dim() == 3 and x.shape[0] == weight.shape[0] else \
        torch.matmul(weight, x)


class GraphScan(nn.Module):
    """:func:`~mmmobilemamba.ops.scan_chunked.ss2d_scan_graph` with its folded ``A`` and
    summed skip weights: the export form's scan as a module of its own, so that an exported
    graph names its nodes (``...ss2d.graph_form.scan``: what tools count as the scan).

    Args:
        A (Tensor): the state matrix (negative), (K*d, N).
        skip (Tensor): the skip weights summed over the directions, (d,).
        split_directions (bool): each direction scanned on its own (see
            :func:`~mmmobilemamba.ops.scan_chunked.ss2d_scan_graph`; ExecuTorch's export sets
            it). Default: False.
        one_operator (bool): the scan as the one operator ``mmmobilemamba::ss2d_scan_graph``
            (:mod:`mmmobilemamba.ops.graph_scan_op`; same values, no gradient) for a runtime
            with a kernel of it: ExecuTorch's export with ``scan_kernel``. Default: False.
    """

    def __init__(self, A: torch.Tensor, skip: torch.Tensor, split_directions: bool = False,
                 one_operator: bool = False) -> None:
        super().__init__()
        self.register_buffer('A', A)
        self.register_buffer('skip', skip)
        self.split_directions = split_directions
        self.one_operator = one_operator

    def forward(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor) -> torch.Tensor:
        if self.one_operator:
            return ss2d_scan_graph_op(u, delta, self.A, B, C, self.skip)
        return ss2d_scan_graph(u, delta, self.A, B, C, self.skip, self.split_directions)


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
        scan_backend (str): the implementation of the scan and of every custom op around it:
            'auto' (Triton's kernels on CUDA, the PyTorch twins elsewhere), 'triton' (the
            kernels anywhere: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
            'torch' (the twins), 'export' (the form exported graphs run: NCHW throughout, the
            scan as :func:`mmmobilemamba.ops.scan_chunked.ss2d_scan_graph`, plain ops only),
            'reference' or 'cuda' (see :func:`mmmobilemamba.ops.selective_scan`).
            Default: 'auto'.
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
        # the CUDA deploy form's projections (switch_to_deploy): not in checkpoints
        self.register_buffer('x_proj_deployed', None, persistent=False)
        self.register_buffer('dt_proj_block', None, persistent=False)
        self.graph_form = None  # the export form's folded tensors (switch_to_deploy('export'))
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
        """(B, D, H, W) -> (B, K, L, D) float32, each direction's output: both directions by
        one :func:`ss2d_scan` op (Triton kernels on CUDA), reading the map and the projections
        where they are; :func:`gated_layer_norm` sums the directions as it reads them (no sum
        kernel, and its gradient reaches every direction as one expanded view).

        The projections act per token, so the reversed direction is the backward scan of the
        unflipped tokens with their own projections: no flips and no concatenation.
        """
        delta, bs, cs = self._projections(u)
        return ss2d_scan(u.flatten(2), delta, self.A_logs, bs, cs, self.Ds,
                         self.dt_projs_bias.view(-1), backend=backend, sum_directions=False)

    def _projections(self, u: torch.Tensor):
        """The scan's step sizes (B, K, D, L) and projections B, C (B, K, N, L), views where
        they can be.

        The first projection is a 1x1 conv; the low-rank step sizes are a batched product per
        direction (not a grouped conv, which cuDNN may run group by group), whose weight is
        copied per image at batch > 1 (it cannot be broadcast along two batch dims). The CUDA
        deploy form reorders the conv's outputs (every direction's step-size rows first) and
        keeps both directions' step-size weights as one block-diagonal matrix
        (:meth:`switch_to_deploy`): one product broadcast over the batch, no copy.
        """
        b, d, h, w = u.shape
        k, r, n = self.directions, self.dt_rank, self.d_state
        length = h * w
        if self.dt_proj_block is not None:
            flat = F.conv2d(u, self.x_proj_deployed).view(b, k * (r + 2 * n), length)
            dts, bs, cs = flat.split([k * r, k * n, k * n], dim=1)
            delta = torch.bmm(self.dt_proj_block.expand(b, k * d, k * r), dts)
            return delta.view(b, k, d, length), bs.view(b, k, n, length), \
                cs.view(b, k, n, length)
        proj = F.conv2d(u, self.x_proj_weight.view(k * (r + 2 * n), d, 1, 1))
        dts, bs, cs = proj.view(b, k, r + 2 * n, length).split([r, n, n], dim=2)
        delta = torch.bmm(self.dt_projs_weight.expand(b, k, d, r).reshape(b * k, d, r),
                          dts.reshape(b * k, r, length))
        return delta.view(b, k, d, length), bs, cs

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
            device_type (str): 'cpu' or 'cuda' (the forms of eager PyTorch; for CUDA also the
                scan's projections in the form of one conv and one product broadcast over the
                batch, see :meth:`_projections`), or 'export': the form exported graphs run
                (ONNX, ExecuTorch): the in-projection as two convs (``u`` and the gate), the
                scan's projections as two convs with their weights in scan order and the step
                sizes' bias folded in, ``A = -exp(A_log)``, the skip weights summed over the
                directions and the LayerNorm's averaging row computed once
                (:meth:`_graph_tensors`), and ``scan_backend`` 'export'. Default: 'cpu'.
        """
        self.in_proj.switch_to_deploy()
        self.out_proj.switch_to_deploy()
        if device_type == 'export':
            self._build_graph_form()
            return
        if not isinstance(self.act, nn.Identity):
            self.conv2d = InferenceConv2d.from_conv(self.conv2d, 'silu')
            self.act = nn.Identity()
        if device_type == 'cuda' and self.dt_proj_block is None:
            k, r, n, d = self.directions, self.dt_rank, self.d_state, self.inner_channels
            rows = self.x_proj_weight.view(k, r + 2 * n, d)
            # every direction's step-size rows, then their B rows, then their C rows
            order = torch.cat([rows[:, :r].reshape(k * r, d), rows[:, r:r + n].reshape(k * n, d),
                               rows[:, r + n:].reshape(k * n, d)])
            self.x_proj_deployed = order.view(k * (r + 2 * n), d, 1, 1).contiguous()
            self.dt_proj_block = torch.block_diag(*self.dt_projs_weight.unbind(0))

    def _build_graph_form(self) -> None:
        """The export form (see :meth:`switch_to_deploy`): tensors a graph holds as constants,
        so that XNNPACK sees static conv weights and nothing is recomputed per image."""
        inner = self.inner_channels
        fused = self.in_proj.conv
        in_u, in_z = (nn.Conv2d(fused.in_channels, inner, 1, device=fused.weight.device,
                                dtype=fused.weight.dtype) for _ in range(2))
        for conv, part in ((in_u, slice(0, inner)), (in_z, slice(inner, 2 * inner))):
            conv.weight.copy_(fused.weight[part])
            conv.bias.copy_(fused.bias[part])
        tensors = {name: t.detach().clone() for name, t in self._graph_tensors().items()}
        form = nn.Module()
        form.in_u, form.in_z = in_u, in_z
        form.scan = GraphScan(tensors.pop('A'), tensors.pop('skip'))
        for name, tensor in tensors.items():
            form.register_buffer(name, tensor)
        self.graph_form = form
        self.scan_backend = 'export'

    def _graph_tensors(self) -> dict:
        """The export form's tensors from the parameters (differentiable): the scan's
        projection ``(1, K(R + 2N), D)`` with its rows in scan order (every direction's
        step-size rank, then its B, then its C), the step-size projections ``(K, D, R)`` and
        their bias ``(K, D, 1)``, ``A``, the summed skip weights and the channel-averaging row
        of the LayerNorm's statistics (XNNPACK reduces a mean over H and W only). The
        projections are matrix products on the flattened map: as 1x1 convs with 24 to 40
        outputs they take onnxruntime several times as long."""
        k, r, n, inner = self.directions, self.dt_rank, self.d_state, self.inner_channels
        w = self.x_proj_weight                                       # (K, R + 2N, D)
        x_proj = torch.cat([w[:, :r].reshape(k * r, inner), w[:, r:r + n].reshape(k * n, inner),
                            w[:, r + n:].reshape(k * n, inner)])
        return dict(x_proj=x_proj.unsqueeze(0), dt_proj=self.dt_projs_weight,
                    dt_bias=self.dt_projs_bias.unsqueeze(-1),
                    A=-torch.exp(self.A_logs.float()),
                    skip=self.Ds.view(k, inner).sum(0),
                    mean_row=torch.full((1, 1, inner), 1.0 / inner, device=w.device,
                                        dtype=w.dtype))

    def _forward_graph(self, x: torch.Tensor) -> torch.Tensor:
        """The export form (``scan_backend='export'``): NCHW maps and plain ops throughout,
        every op one that onnxruntime runs fast and XNNPACK delegates (no split, no
        LayerNorm or mean over channels, no custom op)."""
        form = self.graph_form
        if form is not None:
            tensors, scan = dict(form.named_buffers(recurse=False)), form.scan
            u, z = form.in_u(x), form.in_z(x)
        else:
            tensors = self._graph_tensors()
            scan = GraphScan(tensors['A'], tensors['skip'])
            xz = self.in_proj(x)
            u, z = xz[:, :self.inner_channels], xz[:, self.inner_channels:]
        u = self.conv2d(u)
        if getattr(self.conv2d, 'activation', None) != 'silu':  # else fused in the CPU form
            u = u * torch.sigmoid(u)
        b, d, h, w = u.shape
        k, r, n = self.directions, self.dt_rank, self.d_state
        length = h * w
        u = u.reshape(b, d, length)
        proj = _left_product(tensors['x_proj'], u)                   # (B, K(R + 2N), L)
        dts = proj[:, :k * r].reshape(b * k, r, length) if b == 1 else \
            proj[:, :k * r].reshape(b, k, r, length)
        delta = _left_product(tensors['dt_proj'], dts) + tensors['dt_bias']  # (K, D, L)
        y = scan(u, delta.reshape(b, k, d, length),
                 proj[:, k * r:k * (r + n)].reshape(b, k, n, length),
                 proj[:, k * (r + n):].reshape(b, k, n, length))
        y = self._channel_layer_norm(y.to(x.dtype), tensors['mean_row']).reshape(b, d, h, w)
        return self.out_proj(y * (z * torch.sigmoid(z)))

    def _channel_layer_norm(self, y: torch.Tensor, mean_row: torch.Tensor) -> torch.Tensor:
        """``out_norm`` over the channels ``d`` of ``y (B, d, L)``, its means as products with
        a constant row (a batched matrix product XNNPACK delegates and onnxruntime runs ~20x
        faster than its ReduceMean over channels)."""
        b = y.shape[0]
        rows = mean_row if b == 1 else mean_row.expand(b, -1, -1)
        mean = torch.bmm(rows, y)                                    # (B, 1, L)
        centred = y - mean
        variance = torch.bmm(rows, centred * centred)
        scale = torch.rsqrt(variance + self.out_norm.eps)
        weight = self.out_norm.weight.view(1, -1, 1)
        return centred * scale * weight + self.out_norm.bias.view(1, -1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scan_backend == 'export':
            return self._forward_graph(x)
        u, z = self.in_proj(x).chunk(2, dim=1)
        u = self.act(self.conv2d(u))
        b, d, h, w = u.shape
        backend = resolve_backend(self.scan_backend, u.device)
        if backend == 'triton' or (backend == 'torch' and not channels_innermost(u)):
            # the GPU path in either layout, and NCHW anywhere (compiled, the CUDA form): the
            # fused scan, then LayerNorm, gate and the layout change as one op
            y = gated_layer_norm(self._scan_fused(u, backend), z, self.out_norm.weight,
                                 self.out_norm.bias, self.out_norm.eps, backend)
            return self.out_proj(y)
        if backend in ('torch', 'triton'):
            # channels-last (CPU): the token-major map is already the scan's layout
            y = self.out_norm(self._scan_channels_last(u, backend))  # LayerNorm over D, as is
            y = y.view(b, h, w, d).permute(0, 3, 1, 2)                # (B, D, H, W), NHWC memory
        else:
            # LayerNorm over channels, done channels-last
            y = self.out_norm(self._scan(u, backend).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # back to the memory format of the input for the convolution
        gate = F.silu(z)
        y = y.mul_(gate) if not y.requires_grad else y * gate
        y = y.contiguous(memory_format=memory_format_of(x))
        return self.out_proj(y)
