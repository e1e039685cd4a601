"""Head and neck operators that XNNPACK has no kernel for, rewritten with operators it has.

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
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ['group_norm_decomposed', 'native_group_norm_decomposed', 'nearest_indices',
           'nearest_resize_decomposed', 'xnnpack_decompositions']

aten = torch.ops.aten


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
