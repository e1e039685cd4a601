"""FLOP handles for the selective scan, and a context that makes each scan one traced op.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` counts ops in a ``torch.jit`` trace. Our
selective scan (:func:`mmmobilemamba.ops.selective_scan`) is pure PyTorch: traced as is, it
would show up as dozens of elementwise ops (``exp``, ``mul``, ``sum``...) that the analyzer
leaves uncounted, plus an opaque ``prim::PythonOp`` for its recurrence. Inside
:func:`traceable_selective_scan` every call goes through :class:`SelectiveScanOp`, a
``torch.autograd.Function`` that the tracer records as one ``prim::PythonOp.SelectiveScanOp``
node (the ops it runs inside are not traced), and :data:`SCAN_FLOP_HANDLES` counts that node
by formula.

FLOP formula (mamba-ssm's estimate for its fused kernel, also used by VMamba and the
MobileMamba release, so totals compare with the paper): a scan over ``u`` of shape
``(B, KD, L)`` with ``N`` states costs::

    9 * B * KD * N * L        # discretise (exp(delta*A), delta*B*u), recurrence, C-projection
    + B * KD * L              # the skip term D * u, when D is given

Note the convention differs from mmengine's for convolutions and matmuls, which count one
multiply-add as one FLOP; the scan term keeps the convention of the published numbers.
"""
import functools
import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from mmengine.analysis.jit_handles import get_shape

__all__ = [
    'SCAN_FLOPS_PER_STATE', 'selective_scan_flops', 'SelectiveScanOp',
    'traceable_selective_scan', 'SCAN_FLOP_HANDLES', 'SCAN_ACTIVATION_HANDLES'
]

SCAN_FLOPS_PER_STATE = 9
# Trace names of scan ops: ours (inside traceable_selective_scan), mamba-ssm's fused kernel
# (should a model call it directly), and the linear recurrence of mmmobilemamba.ops.
SCAN_OP = 'prim::PythonOp.SelectiveScanOp'
MAMBA_SSM_SCAN_OP = 'prim::PythonOp.SelectiveScanFn'
RECURRENCE_OP = 'prim::PythonOp._LinearRecurrence'


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


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return 0 if shape is None else int(torch.Size(shape).numel())


def _scan_op_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``SelectiveScanOp``: inputs are u, delta, A, B, C, D, delta_bias."""
    batch, channels, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    with_d = _numel(inputs[5]) > 0  # an absent D is passed as an empty tensor
    return selective_scan_flops(batch, channels, n_state, length, with_d)


def _mamba_ssm_scan_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of mamba-ssm's ``SelectiveScanFn``: inputs start with u, delta, A.

    Its optional tensors (D, z, delta_bias) cannot be told apart by position in the trace, so
    the small ``D * u`` term is left out.
    """
    batch, channels, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    return selective_scan_flops(batch, channels, n_state, length, with_d=False)


def _recurrence_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``h_t = a_t * h_{t-1} + b_t``: one multiply and one add per element."""
    return 2 * _numel(inputs[0])


def _output_activations(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(outputs[0])


SCAN_FLOP_HANDLES: Dict[str, Callable] = {
    SCAN_OP: _scan_op_flops,
    MAMBA_SSM_SCAN_OP: _mamba_ssm_scan_flops,
    RECURRENCE_OP: _recurrence_flops,
}
SCAN_ACTIVATION_HANDLES: Dict[str, Callable] = {name: _output_activations
                                                for name in SCAN_FLOP_HANDLES}


class SelectiveScanOp(torch.autograd.Function):
    """Runs a selective scan as one opaque op, for tracing only (no backward).

    ``D`` and ``delta_bias`` are always tensors here (empty when absent) so that their
    positions among the traced inputs are fixed; ``scan`` computes the real result.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                scan: Callable[[], torch.Tensor]) -> torch.Tensor:
        # The tracer keeps recording inside a Function's forward; ops whose results are unused
        # are dropped later, but not nested Functions (the scan's own recurrence). Pause it so
        # this node is the scan's only trace.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return scan()
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError('SelectiveScanOp is for FLOP analysis only and has no backward')


def _as_traced_op(scan_fn: Callable) -> Callable:
    """Wrap ``scan_fn`` (the signature of ``selective_scan``) to run as SelectiveScanOp."""
    signature = inspect.signature(scan_fn)

    @functools.wraps(scan_fn)
    def traced(*args, **kwargs) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arg = bound.arguments
        empty = arg['u'].new_empty(0)
        d = empty if arg['D'] is None else arg['D']
        bias = empty if arg['delta_bias'] is None else arg['delta_bias']
        # no autograd graph: with grad enabled the tracer rejects the untraced output
        with torch.no_grad():
            return SelectiveScanOp.apply(arg['u'], arg['delta'], arg['A'], arg['B'], arg['C'],
                                         d, bias, functools.partial(scan_fn, *args, **kwargs))

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
def traceable_selective_scan(package: str = 'mmmobilemamba') -> Iterator[None]:
    """Within this context every ``selective_scan`` call of ``package`` is a SelectiveScanOp.

    Modules import the function by name (``from mmmobilemamba.ops import selective_scan``), so
    each loaded module's binding is swapped, and restored on exit. Results are unchanged, but
    scans inside the context build no autograd graph: it is meant for analysis only.

    Args:
        package (str): top-level package whose modules are patched. Default: 'mmmobilemamba'.
    """
    from mmmobilemamba.ops import selective_scan

    traced = _as_traced_op(selective_scan)
    bindings = _bindings_of(selective_scan, package)
    for module, attr in bindings:
        setattr(module, attr, traced)
    try:
        yield
    finally:
        for module, attr in bindings:
            setattr(module, attr, selective_scan)
