"""ONNX export of MobileMamba backbones, detectors and segmentors, checked with onnxruntime.

What is exported (the network on a preprocessed image: normalised, padded as the config's data
preprocessor does, ``(1, 3, H, W)`` float32):

* ``'backbone'``: the three stage outputs (strides 16, 32, 64);
* ``'segmentor'``: the logits at the input size (mmseg's ``encode_decode``);
* ``'detector'``: the raw head outputs, per pyramid level: class scores, then box deltas
  (RetinaNet, SSDLite). Two-stage detectors (Mask R-CNN): the neck's feature maps, then the
  RPN's scores and deltas; their RoI heads (box and mask), which crop the features at the
  proposals, stay in PyTorch (:class:`OnnxRuntimeModel` runs them on the runtime's features).

Post-processing (anchors and NMS, rescaling, resizing logits to the image) is mmdet's and
mmseg's own head code run on the runtime's outputs (:class:`OnnxRuntimeModel`), so predictions
and metrics are those of the PyTorch model.

Before export MobileMamba takes its export form (``switch_to_deploy('export')``: conv + BN
fusion and plain ops that graph runtimes run fast and XNNPACK delegates; its selective scans,
``scan_backend='export'``, a fixed set of large ops whatever the map size) and the rest of the
model is folded for inference. The input shape is static (one export per input size; an image
must be padded or resized to it), as the scan's chunking depends on the feature-map sizes.
Nothing needs CUDA or a compiled kernel.
"""
import copy
import json
import os
import os.path as osp
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ['EXPORT_KINDS', 'ExportResult', 'ExportedNetwork', 'OnnxRuntimeModel',
           'compare_outputs', 'export_config', 'export_onnx', 'prepare_for_export']

EXPORT_KINDS = ('backbone', 'detector', 'segmentor')
OPSET = 18


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Fold ``model`` for inference in the form graph runtimes run (MobileMamba's export form:
    ``switch_to_deploy('export')``), in place."""
    from mmmobilemamba.analysis.benchmark import fuse_for_inference
    from mmmobilemamba.models import MobileMamba
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


class ExportedNetwork(nn.Module):
    """The part of a model that goes into the ONNX file, as a module of one input.

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

    @property
    def two_stage(self) -> bool:
        return self.kind == 'detector' and getattr(self.model, 'with_rpn', False)

    def output_names(self, outputs: Sequence[torch.Tensor]) -> List[str]:
        """Names of the outputs of :meth:`forward` (per level for detectors)."""
        if self.kind == 'backbone':
            return [f'stage{i}' for i in range(len(outputs))]
        if self.kind == 'segmentor':
            return ['seg_logits']
        levels = len(outputs) // (3 if self.two_stage else 2)
        groups = (('feat', 'rpn_cls', 'rpn_reg') if self.two_stage
                  else ('cls_score', 'bbox_pred'))
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
        cls_scores, bbox_preds = self.model.bbox_head(feats)
        return (*cls_scores, *bbox_preds)


def compare_outputs(outputs: Sequence[np.ndarray],
                    references: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """``(max absolute difference, max relative difference)`` over all outputs.

    The relative difference of an output is its largest absolute difference over its largest
    absolute reference value (so that near-zero elements do not dominate).
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


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured (also saved as JSON beside the file).

    Args:
        onnx_file (str): the ONNX file.
        kind (str): 'backbone', 'detector' or 'segmentor'.
        input_shape (list[int]): ``[1, 3, H, W]``: the static input shape.
        input_name (str): the input's name.
        output_names (list[str]): the outputs, in order.
        export_seconds (float): how long the export took.
        config (str, optional): the config file.
        checkpoint (str, optional): the weights (None: random).
        preprocessing (dict): the data preprocessor's settings (mean, std, ...): apply them
            before feeding an image.
        max_abs_diff (float, optional): onnxruntime against PyTorch, with ``verify``.
        max_rel_diff (float, optional): the same, relative (see :func:`compare_outputs`).
    """

    onnx_file: str
    kind: str
    input_shape: List[int]
    input_name: str
    output_names: List[str]
    export_seconds: float
    config: Optional[str] = None
    checkpoint: Optional[str] = None
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    max_abs_diff: Optional[float] = None
    max_rel_diff: Optional[float] = None

    def summary(self) -> str:
        lines = [f'exported {self.kind} {tuple(self.input_shape)} -> {self.onnx_file} '
                 f'({self.export_seconds:.1f} s; outputs: {", ".join(self.output_names)})']
        if self.max_abs_diff is not None:
            lines.append(f'onnxruntime vs PyTorch: max abs diff {self.max_abs_diff:.3g}, '
                         f'max rel diff {self.max_rel_diff:.3g}')
        return '\n'.join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def export_onnx(model: nn.Module, kind: str, inputs: torch.Tensor, onnx_file: str,
                verify: bool = False, config: Optional[str] = None,
                checkpoint: Optional[str] = None,
                preprocessing: Optional[dict] = None) -> ExportResult:
    """Export ``model`` (see the module docstring for ``kind``) for inputs like ``inputs``.

    Args:
        model (nn.Module): the model with its weights, in eval mode; it is not modified (a
            folded copy is exported).
        kind (str): 'backbone', 'detector' or 'segmentor'.
        inputs (Tensor): a preprocessed input ``(1, 3, H, W)``; fixes the input shape.
        onnx_file (str): where to write; ``<onnx_file without .onnx>.json`` describes it.
        verify (bool): run onnxruntime (CPU) on ``inputs`` and compare with the unfolded
            PyTorch model. Default: False.
        config (str, optional): recorded in the JSON.
        checkpoint (str, optional): recorded in the JSON.
        preprocessing (dict, optional): recorded in the JSON.

    Returns:
        ExportResult: what was written and, with ``verify``, the differences.
    """
    inputs = inputs.detach().float().cpu()
    if inputs.dim() != 4 or inputs.shape[:2] != (1, 3):
        raise ValueError(f'inputs must be one preprocessed image (1, 3, H, W), got '
                         f'{tuple(inputs.shape)}')
    shape = tuple(inputs.shape[2:])
    reference_net = ExportedNetwork(model, kind, shape).eval()
    with torch.no_grad():
        references = reference_net(inputs)
    network = ExportedNetwork(prepare_for_export(copy.deepcopy(model).cpu()), kind, shape).eval()
    names = network.output_names(references)
    os.makedirs(osp.dirname(osp.abspath(onnx_file)), exist_ok=True)
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(network, (inputs,), onnx_file, dynamo=True, opset_version=OPSET,
                          input_names=['input'], output_names=names, verbose=False)
    result = ExportResult(onnx_file=onnx_file, kind=kind, input_shape=list(inputs.shape),
                          input_name='input', output_names=names,
                          export_seconds=time.perf_counter() - start, config=config,
                          checkpoint=checkpoint, preprocessing=_jsonable(preprocessing or {}))
    if verify:
        session = _session(onnx_file)
        outputs = session.run(None, {'input': inputs.numpy()})
        result.max_abs_diff, result.max_rel_diff = compare_outputs(outputs, references)
    with open(osp.splitext(onnx_file)[0] + '.json', 'w') as f:
        json.dump(asdict(result), f, indent=1)
    return result


def _session(onnx_file: str):
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError('running an exported model needs onnxruntime: pip install '
                          'onnxruntime') from err
    return onnxruntime.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])


class OnnxRuntimeModel:
    """A detector or segmentor whose network runs in onnxruntime: ``test_step`` as the model's.

    The data preprocessor and the post-processing (and a two-stage detector's RoI heads) are
    the PyTorch model's own code; the exported network replaces the rest. Use it where the
    model's ``test_step`` is used, e.g. to evaluate the exported file with mmengine's
    ``Evaluator`` over the config's test dataloader.

    Args:
        model (nn.Module): the PyTorch detector/segmentor of the exported file (its weights
            matter only for two-stage detectors' RoI heads).
        onnx_file (str): a file written by :func:`export_onnx` (kind 'detector' or
            'segmentor').
    """

    def __init__(self, model: nn.Module, onnx_file: str) -> None:
        with open(osp.splitext(onnx_file)[0] + '.json') as f:
            self.meta = json.load(f)
        if self.meta['kind'] not in ('detector', 'segmentor'):
            raise ValueError(f'{onnx_file} holds a {self.meta["kind"]}: only detectors and '
                             'segmentors predict')
        self.model = model.eval()
        self.session = _session(onnx_file)
        self.network = ExportedNetwork(model, self.meta['kind'], self.meta['input_shape'][2:])

    def run(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        """The exported network's outputs for a preprocessed batch, image by image."""
        expected = tuple(self.meta['input_shape'][2:])
        if tuple(inputs.shape[2:]) != expected:
            raise ValueError(f'the exported network takes {expected[0]}x{expected[1]} inputs '
                             f'(static shape), got {tuple(inputs.shape[2:])}: pad or resize the '
                             'images to it, or export at this size')
        per_image = [self.session.run(None, {'input': x[None].float().cpu().numpy()})
                     for x in inputs]
        return [torch.cat([torch.from_numpy(out[i]) for out in per_image])
                for i in range(len(per_image[0]))]

    @torch.no_grad()
    def test_step(self, data: dict) -> list:
        """Preprocess ``data``, run the exported network, post-process: data samples."""
        data = self.model.data_preprocessor(data, False)
        inputs, samples = data['inputs'], data['data_samples']
        outputs = self.run(inputs)
        if self.meta['kind'] == 'segmentor':
            return self.model.postprocess_result(outputs[0], samples)
        metas = [s.metainfo for s in samples]
        if self.network.two_stage:
            levels = len(outputs) // 3
            feats, rpn_cls, rpn_reg = (outputs[:levels], outputs[levels:2 * levels],
                                       outputs[2 * levels:])
            proposals = self.model.rpn_head.predict_by_feat(
                rpn_cls, rpn_reg, batch_img_metas=metas, cfg=self.model.test_cfg.rpn,
                rescale=False)
            results = self.model.roi_head.predict(tuple(feats), proposals, samples, rescale=True)
        else:
            levels = len(outputs) // 2
            results = self.model.bbox_head.predict_by_feat(
                outputs[:levels], outputs[levels:], batch_img_metas=metas, rescale=True)
        return self.model.add_pred_to_datasample(samples, results)


def export_config(config, checkpoint: Optional[str] = None,
                  shape: Optional[Tuple[int, int]] = None, onnx_file: str = 'model.onnx',
                  backbone_only: bool = False, verify: bool = False,
                  cfg_options: Optional[dict] = None) -> ExportResult:
    """Export the detector/segmentor of a config (or only its backbone) to ONNX.

    Args:
        config (str | Path | Config): a detection or segmentation config.
        checkpoint (str, optional): its weights (our layout or the authors' released files);
            None exports random weights.
        shape (tuple[int, int], optional): image ``(H, W)``; the input is this image after the
            config's data preprocessor (padded as at test time). Default: 800x1280 for
            detection, 512x512 for segmentation.
        onnx_file (str): the output file.
        backbone_only (bool): export the backbone alone (deploy-folded), its weights from the
            checkpoint's ``backbone.`` entries, or its bare keys when it holds a backbone alone
            (every backbone tensor must be there; other keys are ignored).
        verify (bool): compare onnxruntime with PyTorch on the same input.
        cfg_options (dict, optional): config overrides (``--cfg-options``).

    Returns:
        ExportResult: see :func:`export_onnx`.
    """
    from mmmobilemamba.analysis.dummy_batch import DEFAULT_SHAPES, make_dummy_batch, preprocess
    from mmmobilemamba.apis import build_model, detect_codebase, load_config
    from mmmobilemamba.models import MobileMamba
    from mmmobilemamba.models.checkpoint import load_backbone_checkpoint

    cfg = load_config(config, cfg_options)
    scope = detect_codebase(cfg)
    # With backbone_only the whole model only preprocesses the dummy input and its weights
    # are not exported: the checkpoint has to fit the backbone alone (loaded below), not the
    # neck and heads a backbone-only file lacks.
    model = build_model(cfg, checkpoint=None if backbone_only else checkpoint)
    inputs = preprocess(model, make_dummy_batch(scope, shape or DEFAULT_SHAPES[scope]))['inputs']
    preprocessing = {k: v for k, v in cfg.model.get('data_preprocessor', {}).items()
                     if k != '_scope_'}
    if backbone_only:
        backbone_cfg = {k: v for k, v in cfg.model.backbone.items()
                        if k not in ('type', 'init_cfg', '_scope_')}
        network, kind = MobileMamba(**backbone_cfg).eval(), 'backbone'
        if checkpoint is not None:
            # the "backbone.*" tensors of a whole model, else a backbone's own keys (ours or
            # the authors' release); every tensor of the backbone must be there
            load_backbone_checkpoint(network, str(checkpoint), require_all=True)
    else:
        network, kind = model, 'detector' if scope == 'mmdet' else 'segmentor'
    return export_onnx(network, kind, inputs, onnx_file, verify=verify,
                       config=str(getattr(cfg, 'filename', None) or config),
                       checkpoint=None if checkpoint is None else str(checkpoint),
                       preprocessing=preprocessing)
