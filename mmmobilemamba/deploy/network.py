"""The network every export writes: a backbone, detector or segmentor as a module of one
preprocessed image, folded for inference; and the comparison of a runtime's outputs with it.

What is exported (the network on a preprocessed image: normalised, padded as the config's data
preprocessor does, ``(1, 3, H, W)`` float32):

* ``'backbone'``: the three stage outputs (strides 16, 32, 64);
* ``'segmentor'``: the logits at the input size (mmseg's ``encode_decode``);
* ``'detector'``: the head's raw outputs, per pyramid level, one group after the other (class
  scores, box deltas, and a third group where the head has one, e.g. YOLOX's objectness),
  named after the arguments of the head's ``predict_by_feat``. Two-stage detectors (Mask
  R-CNN): the neck's feature maps, then the RPN's scores and deltas; their RoI heads (box and
  mask), which crop the features at the proposals, stay in PyTorch.
"""
import copy
import inspect
import re
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ['EXPORT_KINDS', 'ExportedNetwork', 'compare_outputs', 'head_group_names',
           'output_groups', 'prepare_for_export', 'reference_outputs', 'set_scan_form',
           'signal_to_noise_db']

EXPORT_KINDS = ('backbone', 'detector', 'segmentor')
TWO_STAGE_GROUPS = ('feat', 'rpn_cls', 'rpn_reg')


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Fold ``model`` for inference in the form graph runtimes run, in place.

    Every MobileMamba not folded before takes its export form (``switch_to_deploy('export')``:
    plain ops that onnxruntime runs fast and XNNPACK delegates, the selective scan as a fixed
    set of large ops, ``scan_backend='export'``); the rest is folded (conv + BN).

    Args:
        model (nn.Module): a MobileMamba backbone, detector or segmentor (or any model: only
            its re-parameterisable blocks and conv + BN pairs are folded).

    Returns:
        nn.Module: ``model``, folded, in eval mode.
    """
    from mmmobilemamba.models import MobileMamba
    from mmmobilemamba.models.fuse import fuse_for_inference
    from mmmobilemamba.models.layers import SS2D

    model.eval()
    for module in model.modules():
        if isinstance(module, MobileMamba) and module.deployed is None:  # else keep its form
            module.switch_to_deploy('export')
    fuse_for_inference(model)
    for module in model.modules():
        if isinstance(module, SS2D):
            module.scan_backend = 'export'
    return model


def set_scan_form(model: nn.Module, form: str) -> int:
    """Switch every SS2D scan of a network in the export form
    (:class:`~mmmobilemamba.models.layers.ss2d.GraphScan`) to ``form``, in place.

    Args:
        model (nn.Module): a folded network about to be exported.
        form (str): 'split_directions' (each direction on its own) or 'one_operator' (the
            operator ``mmmobilemamba::ss2d_scan_graph``, for a runtime with the scan kernel).

    Returns:
        int: how many scans were switched (those already in ``form`` are not counted).
    """
    from mmmobilemamba.models.layers.ss2d import GraphScan
    if form not in ('split_directions', 'one_operator'):
        raise ValueError(f"form must be 'split_directions' or 'one_operator', got {form!r}")
    switched = 0
    for module in model.modules():
        if isinstance(module, GraphScan) and not getattr(module, form):
            setattr(module, form, True)
            switched += 1
    return switched


def _singular(name: str) -> str:
    """'cls_scores' -> 'cls_score', 'objectnesses' -> 'objectness'."""
    if name.endswith('nesses'):
        return name[:-2]
    return name[:-1] if name.endswith('s') else name


def head_group_names(head: nn.Module, count: int) -> List[str]:
    """The names of a dense head's ``count`` output groups: its ``predict_by_feat`` arguments.

    Args:
        head (nn.Module): an mmdet dense head (RetinaNet, SSD, FCOS, YOLOX, RPN...).
        count (int): how many groups its forward returned.
    """
    params = [p for p in inspect.signature(head.predict_by_feat).parameters
              if p not in ('self', 'batch_img_metas')]
    if len(params) < count:
        raise ValueError(f'{type(head).__name__}.forward returned {count} groups of maps but '
                         f'its predict_by_feat takes {len(params)}: not a dense head this '
                         'export knows; export the backbone alone with --backbone-only')
    return [_singular(p) for p in params[:count]]


def output_groups(names: Sequence[str]) -> List[Tuple[str, int]]:
    """``[(group, count), ...]`` of output names like ``cls_score0, cls_score1, bbox_pred0..``.

    Args:
        names (Sequence[str]): the output names of an export, in order.
    """
    groups: List[Tuple[str, int]] = []
    for name in names:
        group = re.sub(r'\d+$', '', name)
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    return groups


class ExportedNetwork(nn.Module):
    """The part of a model that goes into the exported file, as a module of one input.

    Args:
        model (nn.Module): a MobileMamba backbone, an mmdet detector or an mmseg segmentor.
        kind (str): 'backbone', 'detector' or 'segmentor'.
        input_shape (tuple[int, int]): ``(H, W)`` of the (preprocessed) input.
    """

    def __init__(self, model: nn.Module, kind: str, input_shape: Tuple[int, int]) -> None:
        super().__init__()
        if kind not in EXPORT_KINDS:
            raise ValueError(f'kind must be one of {EXPORT_KINDS}, got {kind!r}')
        self.model, self.kind = model, kind
        height, width = input_shape
        self.img_metas = [dict(img_shape=(height, width), pad_shape=(height, width),
                               ori_shape=(height, width))]
        self.group_count = None  # a detector head's output groups, known after a forward

    @property
    def two_stage(self) -> bool:
        """A detector with an RPN (its RoI heads stay in PyTorch)."""
        return self.kind == 'detector' and getattr(self.model, 'with_rpn', False)

    def output_names(self, outputs: Sequence[torch.Tensor]) -> List[str]:
        """Names of the outputs of :meth:`forward` (per level for detectors).

        Args:
            outputs (Sequence[Tensor]): what :meth:`forward` returned.
        """
        if self.kind == 'backbone':
            return [f'stage{i}' for i in range(len(outputs))]
        if self.kind == 'segmentor':
            return ['seg_logits']
        if self.two_stage:
            groups = list(TWO_STAGE_GROUPS)
        else:
            groups = head_group_names(self.model.bbox_head, self.group_count or 2)
        levels = len(outputs) // len(groups)
        return [f'{group}{i}' for group in groups for i in range(levels)]

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.kind == 'backbone':
            return tuple(self.model(inputs))
        if self.kind == 'segmentor':
            return (self.model.encode_decode(inputs, self.img_metas),)
        feats = self.model.extract_feat(inputs)
        if self.two_stage:
            rpn_cls, rpn_reg = self.model.rpn_head(feats)
            return (*feats, *rpn_cls, *rpn_reg)
        groups = self.model.bbox_head(feats)
        self.group_count = len(groups)
        return tuple(out for group in groups for out in group)


def compare_outputs(outputs: Sequence[np.ndarray],
                    references: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """``(max absolute difference, max relative difference)`` over all outputs.

    The relative difference of an output is its largest absolute difference over its largest
    absolute reference value (so that near-zero elements do not dominate).

    Args:
        outputs (Sequence[ndarray | Tensor]): a runtime's outputs.
        references (Sequence[Tensor]): PyTorch's, in the same order.
    """
    if len(outputs) != len(references):
        raise ValueError(f'{len(outputs)} outputs against {len(references)} references')
    max_abs = max_rel = 0.0
    for out, ref in zip(outputs, references):
        ref = ref.detach().float().cpu()
        out = torch.as_tensor(np.asarray(out), dtype=torch.float32)
        if out.shape != ref.shape:
            raise ValueError(f'output shape {tuple(out.shape)} differs from {tuple(ref.shape)}')
        diff = (out - ref).abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(ref.abs().max().item(), 1e-12))
    return max_abs, max_rel


def signal_to_noise_db(outputs: Sequence[np.ndarray],
                       references: Sequence[torch.Tensor]) -> float:
    """The worst output's signal-to-quantisation-noise ratio in dB (``10 log10`` of the
    reference's energy over the difference's): how an int8 export reads against float.

    Args:
        outputs (Sequence[ndarray | Tensor]): a runtime's outputs.
        references (Sequence[Tensor]): PyTorch's float outputs, in the same order.
    """
    worst = float('inf')
    for out, ref in zip(outputs, references):
        ref = ref.detach().double().cpu()
        noise = (torch.as_tensor(np.asarray(out), dtype=torch.float64) - ref).pow(2).sum()
        if not torch.isfinite(noise):
            return float('-inf')
        if noise > 0:
            worst = min(worst, 10 * torch.log10(ref.pow(2).sum() / noise).item())
    return worst


def reference_outputs(model: nn.Module, kind: str,
                      inputs: torch.Tensor) -> Tuple[ExportedNetwork, Tuple[torch.Tensor, ...]]:
    """The unfolded model's outputs on ``inputs`` and the folded copy to export.

    Args:
        model (nn.Module): the model as given (not modified).
        kind (str): 'backbone', 'detector' or 'segmentor'.
        inputs (Tensor): one preprocessed image ``(1, 3, H, W)``.

    Returns:
        tuple: the folded :class:`ExportedNetwork` (on the CPU, eval mode) and the
        references, with its output names known.
    """
    shape = tuple(inputs.shape[2:])
    reference_net = ExportedNetwork(model, kind, shape).eval()
    with torch.no_grad():
        references = reference_net(inputs)
    network = ExportedNetwork(prepare_for_export(copy.deepcopy(model).cpu()), kind, shape)
    network.group_count = reference_net.group_count
    return network.eval(), references
