"""Operators that XNNPACK has no kernel for, or a slow one, rewritten with operators it runs
fast.

ExecuTorch's XNNPACK delegate takes convolutions, elementwise arithmetic, ``mean`` over the two
inner dims of a 4-D tensor, reshapes and concatenations, but no group norm (the quickstart
RetinaNet's head: GN after every conv) and no nearest-neighbour resize (the FPN top-down path of
mmdet's and mmseg's necks). Left as they are, each runs on ExecuTorch's portable kernels between
two delegate calls. These decompositions compute the same values with delegable operators and
are applied to the exported program before lowering (:func:`xnnpack_decompositions`):

* group norm: the groups as a 4-D ``(N, G, C/G, HW)`` view, two ``mean``s over its inner dims
  (mean, then the mean of the squared deviation), ``rsqrt`` and the affine as products;
* nearest resize: by an integer factor, every pixel repeated (copies of the map concatenated
  along a new inner axis, then a reshape); by another factor (a 3x3 map to 5x5 in mmseg's FPN
  at 160x160), the rows and columns ATen's kernel picks, as slices concatenated. Exact.

Two kinds of convolution XNNPACK delegates but runs slowly are replaced as modules before the
export (:func:`rewrite_modules_for_xnnpack`), so that an int8 export quantises the
replacements' plain convolutions as it would any other (measured in ExecuTorch 1.5.1 on x86,
one thread; docs/benchmarks.md):

* a depthwise conv of more than 25 taps: XNNPACK's depthwise kernels take up to 5x5, and a
  7x7 one runs as a grouped GEMM of one channel per group (MobileMamba B1's 7x7 convs on 640
  sub-band channels at 16x16: 2.2 ms). :class:`RingDepthwiseConv2d` sums a centre conv of
  at most 5x5 and, per ring around it, two dilated convs (the ring's top and bottom rows,
  its left and right columns), all depthwise kernels XNNPACK takes: 0.57 ms there;
* a transposed conv whose stride equals its kernel (no overlap) with several groups (the
  inverse Haar transform of WTE-Mamba: 1.65 ms at 640 channels and 16x16, a sub-convolution
  per group): :class:`SubpixelConvTranspose2d` computes every output phase of a group by one
  grouped 1x1 conv and interleaves them (``pixel_shuffle``): 0.25 ms.

SS2D's scan in its export form runs each direction on its own for XNNPACK
(:class:`~mmmobilemamba.models.layers.ss2d.GraphScan`'s ``split_directions``): its products
become linear layers (fully connected, 0.16 ms for both directions of B1's largest product)
instead of batched products (0.31 ms). With the scan kernel (:mod:`.scan_kernel`) each scan is
one operator outside XNNPACK's graph instead.
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['RingDepthwiseConv2d', 'SubpixelConvTranspose2d', 'XNNPACK_DEPTHWISE_TAPS',
           'rewrite_modules_for_xnnpack', 'group_norm_decomposed',
           'native_group_norm_decomposed', 'nearest_indices', 'nearest_resize_decomposed',
           'xnnpack_decompositions']

aten = torch.ops.aten

XNNPACK_DEPTHWISE_TAPS = 25  # the largest depthwise kernel (5x5) XNNPACK runs as one


class _Rewrite(nn.Module):
    """A module computing what the module it replaces computed, in a form XNNPACK runs fast;
    ``applies_to`` says which modules it replaces (:data:`requirement` in words)."""

    requirement = ''

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        raise NotImplementedError

    def _require(self, module: nn.Module) -> None:
        if not self.applies_to(module):
            raise ValueError(f'{type(self).__name__}: {module} is not {self.requirement}')


class RingDepthwiseConv2d(_Rewrite):
    """A square depthwise conv of odd size ``k`` from 7 to 11 (stride any, padding ``k // 2``,
    dilation 1) as a sum of depthwise convs of at most 25 taps, the same values.

    The ``k x k`` kernel is peeled ring by ring down to a centre of at most 5x5: ring ``r``
    (offsets ``+-r``) is its two rows, a ``2 x (2r + 1)`` kernel with vertical dilation
    ``2r``, and the rest of its two columns, ``(2r - 1) x 2`` with horizontal dilation
    ``2r``; each conv's padding puts its taps at the original offsets. The bias (if any) is
    the centre conv's; an :class:`~mmmobilemamba.models.layers.InferenceConv2d`'s activation
    follows the sum.

    Args:
        conv (nn.Conv2d): the depthwise conv to replace (its weights are copied).
    """

    requirement = (f'an odd square depthwise conv of {XNNPACK_DEPTHWISE_TAPS + 1} to 121 taps '
                   'with padding k // 2')

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self._require(conv)
        weight = conv.weight.detach()
        k = weight.shape[-1]
        self.channels, self.stride = conv.in_channels, conv.stride
        self.activation = getattr(conv, 'activation', None)
        radius = k // 2
        centre = radius
        while (2 * centre + 1) ** 2 > XNNPACK_DEPTHWISE_TAPS:
            centre -= 1
        self.centre_radius = centre
        self.centre = nn.Parameter(weight[:, :, radius - centre:radius + centre + 1,
                                          radius - centre:radius + centre + 1].clone(),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else \
            nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.rings = nn.ParameterList()
        for r in range(centre + 1, radius + 1):
            inner = slice(radius - r, radius + r + 1)           # the ring's full width
            rows = weight[:, :, [radius - r, radius + r], inner]
            columns = weight[:, :, radius - r + 1:radius + r, [radius - r, radius + r]]
            self.rings.append(nn.Parameter(rows.clone(), requires_grad=False))
            self.rings.append(nn.Parameter(columns.clone(), requires_grad=False))

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        """Whether ``conv`` is a depthwise ``nn.Conv2d`` this class replaces."""
        from mmmobilemamba.models.layers import InferenceConv2d
        if type(conv) not in (nn.Conv2d, InferenceConv2d):  # others may compute otherwise
            return False
        kh, kw = conv.kernel_size
        return (conv.groups == conv.in_channels == conv.out_channels and kh == kw
                and kh % 2 == 1 and kh * kw > XNNPACK_DEPTHWISE_TAPS
                and 2 * kh <= XNNPACK_DEPTHWISE_TAPS  # a ring's two rows fit one kernel
                and conv.padding == (kh // 2, kw // 2) and conv.dilation == (1, 1)
                and conv.padding_mode == 'zeros')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, stride = self.channels, self.stride
        out = F.conv2d(x, self.centre, self.bias, stride, self.centre_radius, groups=c)
        for index in range(0, len(self.rings), 2):
            r = self.centre_radius + 1 + index // 2
            out = out + F.conv2d(x, self.rings[index], None, stride, (r, r), (2 * r, 1),
                                 groups=c)
            out = out + F.conv2d(x, self.rings[index + 1], None, stride, (r - 1, r),
                                 (1, 2 * r), groups=c)
        from mmmobilemamba.models.layers.inference_conv import apply_activation
        return apply_activation(out, self.activation)


class SubpixelConvTranspose2d(_Rewrite):
    """A transposed conv whose stride equals its square kernel ``s`` (padding 0, no output
    padding, dilation 1) as one grouped 1x1 conv and ``pixel_shuffle(s)``: output phase
    ``(a, b)`` of a channel is a 1x1 conv of its group's inputs with the kernel's tap
    ``(a, b)``, and the phases interleave into the ``s x s`` blocks. The same values.

    Args:
        deconv (nn.ConvTranspose2d): the transposed conv to replace (its weights are copied).
    """

    requirement = ('a grouped transposed conv with stride equal to its square kernel, padding 0 '
                   'and dilation 1')

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self._require(deconv)
        s = deconv.stride[0]
        groups = deconv.groups
        in_group = deconv.in_channels // groups
        out_group = deconv.out_channels // groups
        weight = deconv.weight.detach()                   # (C_in, C_out / G, s, s)
        # 1x1 conv output channel (g * out_group + o) * s * s + a * s + b, input ci of group g
        phases = weight.reshape(groups, in_group, out_group, s, s).permute(0, 2, 3, 4, 1)
        self.weight = nn.Parameter(phases.reshape(groups * out_group * s * s, in_group, 1, 1)
                                   .clone(), requires_grad=False)
        self.bias = None if deconv.bias is None else nn.Parameter(
            deconv.bias.detach().repeat_interleave(s * s).clone(), requires_grad=False)
        self.groups, self.scale = groups, s

    @staticmethod
    def applies_to(deconv: nn.Module) -> bool:
        """Whether ``deconv`` is an ``nn.ConvTranspose2d`` this class replaces."""
        if type(deconv) is not nn.ConvTranspose2d:
            return False
        kh, kw = deconv.kernel_size
        return (kh == kw and deconv.stride == (kh, kw) and deconv.padding == (0, 0)
                and deconv.output_padding == (0, 0) and deconv.dilation == (1, 1)
                and deconv.groups > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, groups=self.groups),
                               self.scale)


def rewrite_modules_for_xnnpack(model: nn.Module, scan_operator: bool = False
                                ) -> Dict[str, int]:
    """Replace, in place, the convolutions XNNPACK runs slowly (see the module docstring) by
    modules computing the same values with kernels it runs fast.

    Args:
        model (nn.Module): a folded network about to be exported (eval mode).
        scan_operator (bool): SS2D's scans as the one operator of the scan kernel
            (``GraphScan.one_operator``, left out of XNNPACK's graph) instead of split by
            direction. Default: False.

    Returns:
        dict: how many modules of each kind were replaced (and of SS2D scans split by
        direction, 'GraphScan.split_directions', or made one operator,
        'GraphScan.one_operator').
    """
    from .network import set_scan_form
    scan_form = 'one_operator' if scan_operator else 'split_directions'
    replaced = {'RingDepthwiseConv2d': 0, 'SubpixelConvTranspose2d': 0,
                f'GraphScan.{scan_form}': set_scan_form(model, scan_form)}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            for rewrite in (RingDepthwiseConv2d, SubpixelConvTranspose2d):
                if rewrite.applies_to(child):
                    setattr(parent, name, rewrite(child))
                    replaced[rewrite.__name__] += 1
    return replaced


def _group_norm_4d(x: torch.Tensor, num_groups: int, eps: float):
    """``(normalised x, mean, rstd)`` with the group statistics as ``(N, G, 1, 1)``."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, c // num_groups, -1)      # (N, G, C/G, HW): 4-D
    mean = grouped.mean(dim=(2, 3), keepdim=True)
    centered = grouped - mean
    variance = (centered * centered).mean(dim=(2, 3), keepdim=True)
    rstd = torch.rsqrt(variance + eps)
    return (centered * rstd).reshape(x.shape), mean, rstd


def _affine(out: torch.Tensor, weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    shape = [1, out.shape[1]] + [1] * (out.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def group_norm_decomposed(x: torch.Tensor, num_groups: int,
                          weight: Optional[torch.Tensor] = None,
                          bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
                          cudnn_enabled: bool = True) -> torch.Tensor:
    """``aten.group_norm`` with XNNPACK's operators (see the module docstring).

    Args:
        x (Tensor): ``(N, C, *)``.
        num_groups (int): groups ``G`` (divides ``C``).
        weight (Tensor, optional): per-channel scale.
        bias (Tensor, optional): per-channel shift.
        eps (float): added to the variance.
        cudnn_enabled (bool): unused (the aten op's argument).
    """
    out, _, _ = _group_norm_4d(x, num_groups, eps)
    return _affine(out, weight, bias)


def native_group_norm_decomposed(x: torch.Tensor, weight: Optional[torch.Tensor],
                                 bias: Optional[torch.Tensor], n: int, c: int, hxw: int,
                                 num_groups: int, eps: float):
    """``aten.native_group_norm``: the output, and the group means and reciprocal standard
    deviations ``(N, G)`` (unused at inference; dropped by the lowering).

    Args:
        x (Tensor): ``(N, C, *)``.
        weight (Tensor, optional): per-channel scale.
        bias (Tensor, optional): per-channel shift.
        n (int): batch size.
        c (int): channels.
        hxw (int): spatial size (product).
        num_groups (int): groups.
        eps (float): added to the variance.
    """
    out, mean, rstd = _group_norm_4d(x, num_groups, eps)
    return _affine(out, weight, bias), mean.reshape(n, num_groups), rstd.reshape(n, num_groups)


def _repeat_each(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Every element of ``x`` along ``dim`` (-1 or -2) repeated ``factor`` times, in place of
    ``repeat_interleave`` (which XNNPACK lacks): ``factor`` copies side by side along a new
    axis after ``dim``, then a reshape that merges the two.

    The copies are separate reshapes of ``x`` (not ``unsqueeze``, which XNNPACK takes on the
    last dim only), as XNNPACK's partitioner counts a concatenation's distinct inputs.
    """
    if factor == 1:
        return x
    shape = list(x.shape)
    # (.., H, W) -> (.., H, W, 1) for W, (.., H, 1, W) for H
    copy_shape = shape + [1] if dim == -1 else shape[:-1] + [1, shape[-1]]
    out_shape = shape[:]
    out_shape[dim] *= factor
    copies = [x.reshape(copy_shape) for _ in range(factor)]
    return torch.cat(copies, dim=dim).reshape(out_shape)


def nearest_indices(in_size: int, out_size: int, scale: Optional[float] = None) -> List[int]:
    """The source index of every output index of a nearest resize, as ATen's CPU kernel
    computes it (``floor(i * s)`` in float32, ``s = in / out`` or ``1 / scale``).

    Args:
        in_size (int): input length.
        out_size (int): output length.
        scale (float, optional): the scale factor given to the resize, if any.
    """
    step = np.float32(1.0 / scale) if scale else np.float32(in_size) / np.float32(out_size)
    return [min(int(np.floor(np.float32(i) * step)), in_size - 1) for i in range(out_size)]


def _gather(x: torch.Tensor, indices: Sequence[int], dim: int) -> torch.Tensor:
    """``x.index_select(dim, indices)`` as slices and one concatenation (XNNPACK has no
    gather); for the few rows of a non-integer resize of a small map."""
    return torch.cat([x.narrow(dim, i, 1) for i in indices], dim=dim)


def nearest_resize_decomposed(x: torch.Tensor, output_size: Optional[Sequence[int]],
                              scale_factors: Optional[Sequence[float]]) -> torch.Tensor:
    """``aten.upsample_nearest2d.vec`` with XNNPACK's operators, exactly.

    An integer enlargement repeats every pixel (copies side by side, then a reshape); any
    other size picks the source rows and columns ATen's kernel picks (slices, concatenated).

    Args:
        x (Tensor): ``(N, C, H, W)``.
        output_size (Sequence[int], optional): ``(H', W')``.
        scale_factors (Sequence[float], optional): used when ``output_size`` is None.
    """
    height, width = x.shape[-2:]
    scales = [None, None]
    if output_size is None:
        scales = [float(s) for s in scale_factors]
        output_size = [int(height * scales[0]), int(width * scales[1])]
    out = x
    for dim, size, out_size, scale in ((-1, width, int(output_size[1]), scales[1]),
                                       (-2, height, int(output_size[0]), scales[0])):
        if out_size == size:
            continue
        indices = nearest_indices(size, out_size, scale)
        if out_size % size == 0 and indices == [i // (out_size // size) for i in range(out_size)]:
            out = _repeat_each(out, out_size // size, dim)
        else:
            out = _gather(out, indices, dim)
    return out


def xnnpack_decompositions() -> Dict[torch._ops.OpOverload, Callable]:
    """The table for ``ExportedProgram.run_decompositions``: only these ops are rewritten."""
    return {
        aten.group_norm.default: group_norm_decomposed,
        aten.native_group_norm.default: native_group_norm_decomposed,
        aten.upsample_nearest2d.vec: nearest_resize_decomposed,
    }
