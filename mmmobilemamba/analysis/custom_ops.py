"""FLOP handles for MobileMamba's own ops, and a context that makes each call one traced op.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` counts ops in a ``torch.jit`` trace. Our
ops in :mod:`mmmobilemamba.ops` are pure PyTorch and their implementation is free to change:
the selective scan is a parallel prefix scan of elementwise ops, and the 2x2 Haar transforms
are strided slices with multiply-adds. Traced as they are, they would show up as elementwise
ops that the analyzer leaves uncounted. Inside :func:`traceable_custom_ops` each call goes
through a ``torch.autograd.Function`` that the tracer records as one ``prim::PythonOp.<Name>``
node (what runs inside is not traced) and :data:`CUSTOM_FLOP_HANDLES` counts that node by
formula, whatever the implementation:

* selective scan over ``u`` of shape ``(B, KD, L)`` with ``N`` states (mamba-ssm's estimate
  for its fused kernel, also used by VMamba and the MobileMamba release, so totals compare
  with the paper)::

      9 * B * KD * N * L        # discretise (exp(delta*A), delta*B*u), recurrence, C-projection
      + B * KD * L              # the skip term D * u, when D is given

* wavelet transform and its inverse with ``k x k`` filters: as the grouped stride-2 conv /
  transposed conv they are (mmengine's convention: one multiply-add is one FLOP)::

      B * 4C * h * w * k * k    # h, w: size of the sub-bands (half the image size)

Note the scan term keeps the convention of the published numbers (it counts multiplies and
adds separately), while mmengine counts one multiply-add as one FLOP for convs and matmuls.
"""
import functools
import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from mmengine.analysis.jit_handles import get_shape

__all__ = [
    'SCAN_FLOPS_PER_STATE', 'selective_scan_flops', 'wavelet_flops', 'SelectiveScanOp',
    'SelectiveScanChannelsLastOp', 'SS2DScanOp', 'HaarInverseAddOp', 'GatedLayerNormOp',
    'WaveletTransformOp', 'InverseWaveletTransformOp', 'traceable_custom_ops',
    'CUSTOM_FLOP_HANDLES', 'CUSTOM_ACTIVATION_HANDLES'
]

SCAN_FLOPS_PER_STATE = 9


def selective_scan_flops(batch: int, channels: int, n_state: int, length: int,
                         with_d: bool = True) -> int:
    """FLOPs of one selective scan (see the module docstring for the formula).

    Args:
        batch (int): batch size ``B``.
        channels (int): scanned channels ``K*D`` (directions times inner width).
        n_state (int): state size ``N``.
        length (int): sequence length ``L``.
        with_d (bool): whether the skip term ``D * u`` is added. Default: True.

    Returns:
        int: the FLOP estimate.
    """
    flops = SCAN_FLOPS_PER_STATE * batch * channels * n_state * length
    if with_d:
        flops += batch * channels * length
    return flops


def wavelet_flops(batch: int, channels: int, height: int, width: int, kernel: int = 2) -> int:
    """Multiply-adds of one wavelet transform or inverse transform.

    Args:
        batch (int): batch size ``B``.
        channels (int): channels ``C`` of the image (the transform has 4C sub-band channels).
        height (int): sub-band height ``h`` (half the padded image height).
        width (int): sub-band width ``w``.
        kernel (int): filter size ``k`` (2 for Haar). Default: 2.

    Returns:
        int: ``B * 4C * h * w * k * k``.
    """
    return batch * 4 * channels * height * width * kernel * kernel


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return 0 if shape is None else int(torch.Size(shape).numel())


def _scan_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of SelectiveScanOp: inputs are u, delta, A, B, C, D, delta_bias."""
    batch, channels, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    with_d = _numel(inputs[5]) > 0  # an absent D is passed as an empty tensor
    return selective_scan_flops(batch, channels, n_state, length, with_d)


def _channels_last_scan_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of SelectiveScanChannelsLastOp: u (B, L, D), delta, A (D, N), B, C, D, bias."""
    batch, length, channels = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    with_d = _numel(inputs[5]) > 0
    return selective_scan_flops(batch, channels, n_state, length, with_d)


def _ss2d_scan_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of SS2DScanOp: u (B, d, L), delta (B, K, d, L), A (K*d, N), ...: K scans of d
    channels with the skip term."""
    batch, directions, channels, length = get_shape(inputs[1])
    n_state = get_shape(inputs[2])[1]
    return selective_scan_flops(batch, directions * channels, n_state, length, with_d=True)


def _mamba_ssm_scan_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of mamba-ssm's SelectiveScanFn (a model calling it directly): u, delta, A...

    Its optional tensors (D, z, delta_bias) cannot be told apart by position in the trace, so
    the small ``D * u`` term is left out.
    """
    batch, channels, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    return selective_scan_flops(batch, channels, n_state, length, with_d=False)


def _wavelet_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of WaveletTransformOp: (x, filters) -> (B, C, 4, h, w)."""
    batch, channels, _, height, width = get_shape(outputs[0])
    return wavelet_flops(batch, channels, height, width, get_shape(inputs[1])[-1])


def _inverse_wavelet_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of InverseWaveletTransformOp: ((B, C, 4, h, w), filters) -> image."""
    batch, channels, _, height, width = get_shape(inputs[0])
    return wavelet_flops(batch, channels, height, width, get_shape(inputs[1])[-1])


def _haar_inverse_add_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of HaarInverseAddOp: sub-bands (B, 4C, h, w), base, taps: the inverse transform
    (the scales and the sum are elementwise, uncounted as for the unfused form)."""
    batch, bands, height, width = get_shape(inputs[0])
    return wavelet_flops(batch, bands // 4, height, width, 2)


def _gated_layer_norm_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of GatedLayerNormOp: y (B, L, D), z, weight, bias: mmengine's estimate for an
    affine LayerNorm over ``y`` (5 per element); the gate is elementwise, uncounted as for the
    unfused form."""
    return 5 * _numel(inputs[0])


def _output_activations(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(outputs[0])


class _OpaqueOp(torch.autograd.Function):
    """Runs ``call`` (the last argument) as one traced node; for analysis only (no backward).

    The tensor arguments before ``call`` are what the trace records as the node's inputs.
    """

    @staticmethod
    def forward(ctx, *args) -> torch.Tensor:
        # The tracer keeps recording inside a Function's forward; ops whose results are unused
        # are dropped later, but not nested Functions (e.g. the scan's recurrence). Pause it so
        # that this node is the op's only trace.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return args[-1]()
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError('the traced custom ops are for FLOP analysis only: no backward')


class SelectiveScanOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.SelectiveScanOp``: u, delta, A, B, C, D, delta_bias."""


class SelectiveScanChannelsLastOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.SelectiveScanChannelsLastOp``: one direction, token-major."""


class SS2DScanOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.SS2DScanOp``: both directions of SS2D's scan."""


class HaarInverseAddOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.HaarInverseAddOp``: sub-bands, base, taps (scales)."""


class GatedLayerNormOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.GatedLayerNormOp``: y, z, LayerNorm weight and bias."""


class WaveletTransformOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.WaveletTransformOp``: x, filters."""


class InverseWaveletTransformOp(_OpaqueOp):
    """Traced as ``prim::PythonOp.InverseWaveletTransformOp``: sub-bands, filters."""


def _trace_name(op: type) -> str:
    return f'prim::PythonOp.{op.__name__}'


CUSTOM_FLOP_HANDLES: Dict[str, Callable] = {
    _trace_name(SelectiveScanOp): _scan_op_flops,
    _trace_name(SelectiveScanChannelsLastOp): _channels_last_scan_op_flops,
    _trace_name(SS2DScanOp): _ss2d_scan_op_flops,
    _trace_name(HaarInverseAddOp): _haar_inverse_add_op_flops,
    _trace_name(GatedLayerNormOp): _gated_layer_norm_op_flops,
    _trace_name(WaveletTransformOp): _wavelet_op_flops,
    _trace_name(InverseWaveletTransformOp): _inverse_wavelet_op_flops,
    'prim::PythonOp.SelectiveScanFn': _mamba_ssm_scan_flops,
}
CUSTOM_ACTIVATION_HANDLES: Dict[str, Callable] = {name: _output_activations
                                                  for name in CUSTOM_FLOP_HANDLES}


def _scan_tensors(arguments: Dict[str, Any]) -> Tuple[torch.Tensor, ...]:
    """selective_scan's tensors in a fixed layout: an absent D / delta_bias becomes empty."""
    empty = arguments['u'].new_empty(0)
    optional = [empty if arguments[k] is None else arguments[k] for k in ('D', 'delta_bias')]
    return tuple(arguments[k] for k in ('u', 'delta', 'A', 'B', 'C')) + tuple(optional)


def _leading_tensors(arguments: Dict[str, Any]) -> Tuple[torch.Tensor, ...]:
    return tuple(v for v in arguments.values() if isinstance(v, torch.Tensor))


def _as_traced_op(fn: Callable, op: type, tensors_of: Callable) -> Callable:
    """Wrap ``fn`` so that each call runs as ``op``, its tensors picked by ``tensors_of``."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def traced(*args, **kwargs) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        # no autograd graph: with grad enabled the tracer rejects the untraced output
        with torch.no_grad():
            return op.apply(*tensors_of(bound.arguments), functools.partial(fn, *args, **kwargs))

    return traced


def _bindings_of(obj: Any, package: str) -> List[Tuple[Any, str]]:
    """Every ``(module, attribute)`` of ``package``'s loaded modules that is bound to ``obj``."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + '.')):
            continue
        found.extend((module, attr) for attr, value in list(vars(module).items())
                     if value is obj)
    return found


@contextmanager
def traceable_custom_ops(package: str = 'mmmobilemamba') -> Iterator[None]:
    """Within this context our ops called from ``package`` trace as single countable nodes.

    Covers ``selective_scan``, ``selective_scan_channels_last``, ``ss2d_scan``,
    ``haar_inverse_add``, ``gated_layer_norm``, ``wavelet_transform`` and
    ``inverse_wavelet_transform`` of :mod:`mmmobilemamba.ops`. Modules import them by name
    (``from mmmobilemamba.ops import selective_scan``), so each loaded module's binding is
    swapped, and restored on exit.
    Results are unchanged, but the calls build no autograd graph: for analysis only.

    Args:
        package (str): top-level package whose modules are patched. Default: 'mmmobilemamba'.
    """
    from mmmobilemamba import ops
    from mmmobilemamba.ops import fused_ops

    wrappers = {
        ops.selective_scan: _as_traced_op(ops.selective_scan, SelectiveScanOp, _scan_tensors),
        ops.selective_scan_channels_last: _as_traced_op(
            ops.selective_scan_channels_last, SelectiveScanChannelsLastOp, _scan_tensors),
        ops.ss2d_scan: _as_traced_op(ops.ss2d_scan, SS2DScanOp, _leading_tensors),
        fused_ops.haar_inverse_add: _as_traced_op(fused_ops.haar_inverse_add, HaarInverseAddOp,
                                                  _leading_tensors),
        fused_ops.gated_layer_norm: _as_traced_op(fused_ops.gated_layer_norm, GatedLayerNormOp,
                                                  _leading_tensors),
        ops.wavelet_transform: _as_traced_op(ops.wavelet_transform, WaveletTransformOp,
                                             _leading_tensors),
        ops.inverse_wavelet_transform: _as_traced_op(
            ops.inverse_wavelet_transform, InverseWaveletTransformOp, _leading_tensors),
    }
    swapped = [(module, attr, original)
               for original in wrappers for module, attr in _bindings_of(original, package)]
    for module, attr, original in swapped:
        setattr(module, attr, wrappers[original])
    try:
        yield
    finally:
        for module, attr, original in swapped:
            setattr(module, attr, original)
