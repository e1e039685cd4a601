"""Parameters and FLOPs of a model, with MobileMamba's selective scan counted.

Built on mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (a ``torch.jit`` trace; one
multiply-add counts as one FLOP for convs and matmuls, elementwise ops are not counted). On
top of it:

* every selective scan and wavelet transform is traced as one op and counted by formula,
  whatever its implementation (see :mod:`mmmobilemamba.analysis.custom_ops`);
* ops that were seen but not counted are returned, split into elementwise ops (uncounted by
  convention) and the rest, so that nothing is skipped silently.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.analysis import ActivationAnalyzer, FlopAnalyzer, parameter_count
from mmengine.analysis.print_helper import (_format_size, complexity_stats_str,
                                            complexity_stats_table)

from .custom_ops import CUSTOM_ACTIVATION_HANDLES, CUSTOM_FLOP_HANDLES, traceable_custom_ops

__all__ = ['ComplexityReport', 'analyze_complexity', 'tensor_mode', 'config_complexity',
           'ELEMENTWISE_OPS', 'DATA_MOVEMENT_OPS']

# Zero-FLOP ops mmengine does not already ignore: memory movement only.
DATA_MOVEMENT_OPS = ('aten::flip', 'aten::repeat', 'aten::clone', 'aten::expand_as',
                     'aten::view_as', 'aten::pad', 'aten::reflection_pad2d',
                     'aten::pixel_shuffle', 'aten::pixel_unshuffle', 'aten::unfold',
                     'aten::empty_like', 'aten::new_ones', 'aten::meshgrid', 'aten::where')
# Elementwise arithmetic, reductions, pooling and selection: seen in the trace, not counted
# (the convention of published FLOPs and of mmdet's get_flops).
ELEMENTWISE_OPS = frozenset(
    f'aten::{name}{suffix}' for suffix in ('', '_')
    for name in ('add', 'sub', 'rsub', 'mul', 'div', 'neg', 'exp', 'log', 'log2', 'sqrt', 'rsqrt',
                 'pow', 'abs', 'sigmoid', 'silu', 'gelu', 'hardswish', 'hardsigmoid', 'relu6',
                 'leaky_relu', 'elu', 'softplus', 'tanh', 'softmax', 'log_softmax', 'sum',
                 'mean', 'clamp_min', 'clamp_max', 'min', 'maximum', 'minimum', 'lt', 'le',
                 'ne', 'exp2', 'reciprocal', 'square', 'sign', 'ceil', 'round', 'sort',
                 'topk', 'argmax', 'max_pool2d', 'avg_pool2d', 'cumsum', 'prod', 'norm',
                 'linalg_vector_norm', 'addcmul', 'hardtanh'))


@dataclass
class ComplexityReport:
    """What :func:`analyze_complexity` measured.

    Args:
        flops (int): FLOPs of one forward pass.
        params (int): number of parameters.
        activations (int): activation count (outputs of convs and matmuls).
        flops_by_operator (dict[str, int]): FLOPs per counted operator type.
        flops_by_module (dict[str, int]): FLOPs per module name ('' is the whole model).
        params_by_module (dict[str, int]): parameters per module name.
        uncounted_elementwise (dict[str, int]): elementwise ops, reductions, pooling and
            selection (``ELEMENTWISE_OPS``) seen and not counted, by convention.
        unsupported_ops (dict[str, int]): other ops seen with no FLOP handle.
        table (str): per-module table of parameters, FLOPs and activations.
        arch (str): the model's repr annotated with the same statistics, if requested.
        input_shape (tuple[int, ...], optional): shape of the analysed input tensor.
    """

    flops: int
    params: int
    activations: int
    flops_by_operator: Dict[str, int]
    flops_by_module: Dict[str, int]
    params_by_module: Dict[str, int]
    uncounted_elementwise: Dict[str, int] = field(default_factory=dict)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    table: str = ''
    arch: str = ''
    input_shape: Optional[Tuple[int, ...]] = None

    def top_level(self) -> Dict[str, Tuple[int, int]]:
        """``{child name: (params, flops)}`` for the model's direct children with any."""
        parts = {n: (self.params_by_module.get(n, 0), self.flops_by_module.get(n, 0))
                 for n in self.flops_by_module if n and '.' not in n}
        return {n: counts for n, counts in parts.items() if any(counts)}

    def summary(self) -> str:
        """A short report in the style of mmdet's ``get_flops`` tool."""
        bar = '=' * 60
        lines = [bar]
        if self.input_shape is not None:
            lines.append(f'Input shape: {tuple(self.input_shape)}')
        lines += [f'Flops: {_format_size(self.flops)}',
                  f'Params: {_format_size(self.params)}',
                  f'Activations: {_format_size(self.activations)}']
        parts = self.top_level()
        if parts:
            lines.append('By part:')
            width = max(len(n) for n in parts)
            lines += [f'  {name:<{width}}  params {_format_size(p):>8}  flops {_format_size(f):>8}'
                      for name, (p, f) in parts.items()]
        lines.append('Counted by operator: ' + ', '.join(
            f'{op} {_format_size(n)}' for op, n in sorted(self.flops_by_operator.items(),
                                                          key=lambda kv: -kv[1])))
        if self.uncounted_elementwise:
            lines.append('Not counted (elementwise/reductions, by convention): ' +
                         ', '.join(sorted(self.uncounted_elementwise)))
        if self.unsupported_ops:
            lines.append('WARNING: not counted, no FLOP handle: ' + ', '.join(
                f'{op} x{n}' for op, n in sorted(self.unsupported_ops.items())))
        lines.append(bar)
        return '\n'.join(lines)


def _analyzers(model: nn.Module,
               inputs: Tuple) -> Tuple[FlopAnalyzer, ActivationAnalyzer]:
    flops = FlopAnalyzer(model, inputs).set_op_handle(**CUSTOM_FLOP_HANDLES)
    acts = ActivationAnalyzer(model, inputs).set_op_handle(**CUSTOM_ACTIVATION_HANDLES)
    for analyzer in (flops, acts):
        analyzer.set_op_handle(**{op: None for op in DATA_MOVEMENT_OPS})
        # we report uncounted ops ourselves, with the elementwise ones told apart
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return flops, acts


def analyze_complexity(model: nn.Module, inputs: Union[torch.Tensor, Tuple],
                       max_depth: int = 3, show_arch: bool = False) -> ComplexityReport:
    """Count parameters, FLOPs and activations of ``model(*inputs)``.

    Args:
        model (nn.Module): the model; its ``forward`` is traced once per analyzer.
        inputs (Tensor | tuple): the forward's positional arguments.
        max_depth (int): depth of the per-module table. Default: 3.
        show_arch (bool): also render the annotated model repr. Default: False.

    Returns:
        ComplexityReport: totals, breakdowns and the uncounted ops.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs, )
    params = dict(parameter_count(model))
    with torch.no_grad(), traceable_custom_ops():
        # analyses run lazily: everything that traces stays inside the patch
        flop_counter, act_counter = _analyzers(model, inputs)
        total = flop_counter.total()
        unsupported = dict(flop_counter.unsupported_ops())
        report = ComplexityReport(
            flops=total,
            params=params.get('', 0),
            activations=act_counter.total(),
            flops_by_operator=dict(flop_counter.by_operator()),
            flops_by_module=dict(flop_counter.by_module()),
            params_by_module=params,
            uncounted_elementwise={op: n for op, n in unsupported.items()
                                   if op in ELEMENTWISE_OPS},
            unsupported_ops={op: n for op, n in unsupported.items()
                             if op not in ELEMENTWISE_OPS},
            table=complexity_stats_table(flops=flop_counter, max_depth=max_depth,
                                         activations=act_counter, show_param_shapes=False),
            arch=complexity_stats_str(flops=flop_counter, activations=act_counter)
            if show_arch else '',
            input_shape=tuple(inputs[0].shape) if isinstance(inputs[0], torch.Tensor) else None)
    return report


@contextlib.contextmanager
def tensor_mode(model: nn.Module, data_samples: Sequence) -> Iterator[nn.Module]:
    """Make ``model(inputs)`` run ``model(inputs, data_samples, mode='tensor')``.

    mmdet detectors and mmseg segmentors take data samples and a mode; the tracer passes only
    tensors. The instance's ``forward`` is bound for the duration and restored afterwards.

    Args:
        model (nn.Module): a detector or segmentor.
        data_samples (list): the data samples of the batch (image metas).
    """
    cls_forward = type(model).forward

    def forward(inputs: torch.Tensor):
        return cls_forward(model, inputs, data_samples, mode='tensor')

    model.forward = forward
    try:
        yield model
    finally:
        del model.forward


def config_complexity(config, shape: Optional[Tuple[int, int]] = None,
                      cfg_options: Optional[dict] = None, max_depth: int = 3,
                      show_arch: bool = False, device: str = 'cpu') -> ComplexityReport:
    """Complexity of the whole detector/segmentor of a config on a synthetic image.

    The image goes through the model's data preprocessor (so padding is as at test time),
    then backbone, neck and heads run in ``mode='tensor'``.

    Args:
        config (str | Path | Config): detection or segmentation config.
        shape (tuple[int, int], optional): image ``(H, W)``; by default 800x1280 for
            detection and 512x512 for segmentation.
        cfg_options (dict, optional): config overrides (``--cfg-options``).
        max_depth (int): depth of the per-module table. Default: 3.
        show_arch (bool): also render the annotated model repr. Default: False.
        device (str): device to trace on. Default: 'cpu'.

    Returns:
        ComplexityReport: for the padded input actually fed to the network.
    """
    from mmmobilemamba.apis import build_model, detect_codebase, load_config

    from mmmobilemamba.datasets.dummy_batch import DEFAULT_SHAPES, make_dummy_batch, preprocess

    cfg = load_config(config, cfg_options)
    scope = detect_codebase(cfg)
    model = build_model(cfg, device=device)
    batch = preprocess(model, make_dummy_batch(scope, shape or DEFAULT_SHAPES[scope]))
    with torch.no_grad(), tensor_mode(model, batch['data_samples']):
        return analyze_complexity(model, (batch['inputs'], ), max_depth, show_arch)
