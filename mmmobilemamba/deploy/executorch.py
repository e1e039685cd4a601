"""ExecuTorch export (XNNPACK delegate) of MobileMamba backbones, detectors and segmentors: the
``.pte`` file that ExecuTorch's runtime loads on Android and iOS, run here by its Python runtime.

What is exported and how it is post-processed: :mod:`.network`, :mod:`.runtime_model`. Here:
the ExecuTorch steps. ``torch.export`` of the folded network, the head and neck operators
XNNPACK lacks rewritten with ones it has (:mod:`.xnnpack_rewrites`), then
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and
``to_executorch()``. The record says which share of the graph's operator nodes XNNPACK took
and which were left to ExecuTorch's portable kernels, by op and by module.

int8: PT2E post-training static quantisation (torchao's ``prepare_pt2e`` / ``convert_pt2e``
with ExecuTorch's ``XNNPACKQuantizer``: int8 weights symmetric per output channel, int8
activations per tensor from histogram observers), calibrated on the images given; the parts
kept float (:mod:`.quantization`) are filtered out of the quantiser's annotation, and a
convolution run several times (a dense head on every pyramid level) gets a bias per use
(:func:`unshare_conv_biases`: XNNPACK's serialiser quantises a shared bias for its first use only).

With ``scan_kernel`` each SS2D scan is one call of this project's ExecuTorch kernel
(:mod:`.scan_kernel`) between XNNPACK's calls; a session loads the kernel for a program that
calls it.
"""
import functools
import gc
import weakref
from collections import Counter
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

from .network import ExportedNetwork
from .quantization import FloatParts
from .runtime import ExportedBytes, Runtime, Session
from .runtime_model import RuntimeModel
from .scan_kernel import (build_scan_kernel, kernel_record, load_scan_kernel_if_called,
                          program_calls_scan_kernel)

__all__ = ['ExecuTorchModel', 'ExecuTorchRuntime', 'ExecuTorchSession', 'delegation_report',
           'export_executorch', 'set_threads', 'unshare_conv_biases', 'xnnpack_quantizer']

INSTALL_HINT = ('pip install executorch==1.5.1 (the version the project pins for torch '
                '2.14.1; `make setup` installs requirements/deploy.txt)')
# operators that compute nothing (tuple access, the delegate calls themselves)
_NOT_COUNTED = ('getitem', 'executorch_call_delegate')


# the sessions alive: XNNPACK programs keep the thread pool they were loaded with
_LIVE_SESSIONS: 'weakref.WeakSet' = weakref.WeakSet()


def set_threads(threads: int) -> None:
    """Size ExecuTorch's CPU thread pool (XNNPACK's threads; one pool per process).

    XNNPACK programs hold on to the pool they were loaded with, so it can only be resized
    while no program is loaded (resizing under a loaded one crashes the process).

    Args:
        threads (int): worker threads (>= 1).

    Raises:
        RuntimeError: when programs of another pool size are loaded.
    """
    from executorch.extension.pybindings.portable_lib import (
        _threadpool_get_thread_count, _unsafe_reset_threadpool)
    if threads < 1:
        raise ValueError(f'threads must be at least 1, got {threads}')
    current = _threadpool_get_thread_count()
    if current == threads:
        return
    gc.collect()  # sessions no longer referenced
    if len(_LIVE_SESSIONS):
        raise RuntimeError(f'ExecuTorch\'s thread pool has {current} threads and '
                           f'{len(_LIVE_SESSIONS)} program(s) loaded on it: release them '
                           f'before asking for {threads} threads (one pool per process)')
    _unsafe_reset_threadpool(threads)


def _thread_count() -> int:
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count
    return _threadpool_get_thread_count()


class ExecuTorchSession(Session):
    """ExecuTorch's runtime (its Python bindings, XNNPACK linked) on a ``.pte`` program.

    Args:
        data (bytes | str): the program's content or path.
        threads (int, optional): the size of the process's thread pool, set before loading
            (None: as it is, by default the cores); see :func:`set_threads`.
    """

    def __init__(self, data: Union[bytes, str], threads: Optional[int] = None) -> None:
        from executorch.runtime import Runtime as ExecuTorchRuntimeCore
        runtime = ExecuTorchRuntimeCore.get()
        if not runtime.backend_registry.is_available('XnnpackBackend'):
            raise RuntimeError('this executorch build has no XNNPACK backend: ' + INSTALL_HINT)
        if threads:
            set_threads(threads)  # before loading: the program keeps this pool
        load_scan_kernel_if_called(data)
        self.program = runtime.load_program(data)
        self.method = self.program.load_method('forward')
        self.threads = _thread_count()
        _LIVE_SESSIONS.add(self)

    def run(self, inputs: torch.Tensor) -> list:
        return list(self.method.execute((inputs.float().contiguous(),)))  # copies


def _op_name(node) -> str:
    """'aten.native_layer_norm.default' of an edge-dialect node."""
    target = node.target
    name = getattr(target, '_name', None) or getattr(target, '__name__', None) or str(target)
    return name.replace('::', '.')


def _module_of(node) -> str:
    """``path (Class)`` of the innermost module a node was traced in ('?' if unknown)."""
    stack = node.meta.get('nn_module_stack') or {}
    if not stack:
        return '?'
    path, cls = list(stack.values())[-1]
    cls = cls if isinstance(cls, str) else cls.__qualname__
    return f'{path.removeprefix("model.") or "model"} ({cls.rsplit(".", 1)[-1]})'


def delegation_report(graph_module: torch.fx.GraphModule) -> Dict:
    """Which operator nodes of a lowered graph XNNPACK runs, and which are left out.

    Counts call-function nodes of the lowered submodules (delegated) and of the top graph:
    this project's operators (``mmmobilemamba.*``, run by its kernels: :mod:`.scan_kernel`)
    and the rest (portable kernels), without tuple accesses; uses ExecuTorch's own
    ``executorch.devtools.backend_debug.get_delegation_info`` for the delegated counts.

    Args:
        graph_module (GraphModule): ``to_edge_transform_and_lower(...).exported_program()
            .graph_module``.
    """
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(graph_module)
    table = info.get_operator_delegation_dataframe()
    delegated = int(sum(n for op, n in zip(table['op_type'],
                                           table['occurrences_in_delegated_graphs'])
                        if op not in ('Total', ) and op not in _NOT_COUNTED))
    portable_ops, portable_modules, kernel_ops = Counter(), Counter(), Counter()
    for node in graph_module.graph.nodes:
        if node.op != 'call_function' or any(s in str(node.target) for s in _NOT_COUNTED):
            continue
        if _op_name(node).startswith('mmmobilemamba.'):
            kernel_ops[_op_name(node)] += 1
            continue
        portable_ops[_op_name(node)] += 1
        portable_modules[_module_of(node)] += 1
    portable, kernels = sum(portable_ops.values()), sum(kernel_ops.values())
    total = delegated + portable + kernels
    return dict(backend='XnnpackBackend', delegate_calls=int(info.num_delegated_subgraphs),
                delegated_nodes=delegated, portable_nodes=portable, kernel_nodes=kernels,
                total_nodes=total, share=delegated / total if total else 1.0,
                portable_ops=dict(portable_ops.most_common()),
                portable_by_module=dict(portable_modules.most_common()),
                kernel_ops=dict(kernel_ops.most_common()))


def _float_part(node, float_parts: FloatParts):
    """The float part a node of an exported graph belongs to (None: quantised)."""
    stack = node.meta.get('nn_module_stack') or {}
    hierarchy = [(path, cls if isinstance(cls, str) else cls.__qualname__)
                 for path, cls in stack.values()]
    return float_parts.part_of(hierarchy, str(node.target), node.name)


def _quantize_filter(graph: torch.fx.GraphModule, float_parts: FloatParts):
    """The XNNPACK quantiser's node filter: False (leave float) for the parts kept float.

    Every operator node of ``graph`` is classified first, so that the record counts all the
    nodes a part kept float (as onnxruntime's exclusion list does), not only those the
    quantiser would have annotated.
    """
    kept = {node.name for node in graph.graph.nodes
            if node.op == 'call_function' and _float_part(node, float_parts)}
    return lambda node: node.name not in kept


_ANNOTATION = 'quantization_annotation'
_WEIGHTED_OPS = ('aten.conv1d', 'aten.conv2d', 'aten.convolution', 'aten.linear')


def _annotate_shared_weight_users(model: torch.fx.GraphModule, config, quantize) -> None:
    """Annotate the convolutions that reuse an annotated convolution's weight like it.

    A dense head (RetinaNet's, FCOS's, the RPN) runs the same convolutions on every pyramid
    level. ExecuTorch's conv annotator marks a weight annotated with its first user and skips
    the others, which are left with int8 inputs and a float weight: a conv XNNPACK's partitioner
    takes but its runtime refuses to build ("Failed to create convolution node ...:
    xnn_status_invalid_parameter" when the program loads).
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    def weighted(node) -> bool:
        return node.op == 'call_function' and str(node.target).startswith(_WEIGHTED_OPS)

    quantized_weights = {node.args[1] for node in model.graph.nodes
                         if weighted(node) and _ANNOTATION in node.meta
                         and node.args[1] in node.meta[_ANNOTATION].input_qspec_map}
    for node in model.graph.nodes:
        if (not weighted(node) or _ANNOTATION in node.meta or not quantize(node)
                or node.args[1] not in quantized_weights):
            continue
        qspecs = {node.args[0]: config.input_activation, node.args[1]: config.weight}
        if len(node.args) > 2 and node.args[2] is not None and config.bias is not None:
            qspecs[node.args[2]] = config.bias
        node.meta[_ANNOTATION] = QuantizationAnnotation(
            input_qspec_map=qspecs, output_qspec=config.output_activation, _annotated=True)


def unshare_conv_biases(graph: torch.fx.GraphModule) -> int:
    """Give every use of a convolution or linear layer applied several times its own bias.

    XNNPACK stores an int8 convolution's bias as int32 in units of input scale x weight scale,
    and its ExecuTorch serialiser writes a tensor once, with the quantisation of its first
    user. A dense head runs one convolution on every pyramid level, each level with its own
    input scale: from the second level on, the bias was read in the wrong units (the quickstart
    RetinaNet's classifier, bias -4.6, lost 6.8 points of box mAP; its outputs' SNR fell from
    40 dB to 10 dB on the coarsest level). A copy of the bias per use costs a few floats.

    Args:
        graph (GraphModule): the exported graph (``torch.export(...).module()``), changed in
            place before the quantiser annotates it.

    Returns:
        int: the biases copied.
    """
    users: Dict[torch.fx.Node, list] = {}
    for node in graph.graph.nodes:
        if (node.op == 'call_function' and str(node.target).startswith(_WEIGHTED_OPS)
                and len(node.args) > 2 and isinstance(node.args[2], torch.fx.Node)
                and node.args[2].op == 'get_attr'):
            users.setdefault(node.args[2], []).append(node)
    copies = 0
    for bias, weighted in users.items():
        value = functools.reduce(getattr, bias.target.split('.'), graph)
        for user in weighted[1:]:
            name = f'_bias_copy_{copies}'
            graph.register_buffer(name, value.detach().clone())
            with graph.graph.inserting_before(user):
                copy = graph.graph.get_attr(name)
            copy.meta.update(bias.meta)
            user.replace_input_with(bias, copy)
            copies += 1
    if copies:
        graph.recompile()
    return copies


def xnnpack_quantizer(graph: torch.fx.GraphModule, float_parts: FloatParts):
    """ExecuTorch's XNNPACK quantiser (int8, per-channel weights) that leaves ``float_parts``
    float and quantises convolutions that share their weights.

    Two gaps of the quantiser are closed after it annotates:

    * its filter function alone does not keep a part float: its concatenation annotator ignores
      the filter, and annotations spread from there to the reshapes after it (the scan's
      ``cat([x, flip(x)])`` would be int8). The annotations of filtered-out nodes are removed.
    * a convolution applied several times (a dense head on every pyramid level) is annotated
      once; the other applications are annotated alike (:func:`_annotate_shared_weight_users`).

    Args:
        graph (GraphModule): the exported graph (``torch.export(...).module()``).
        float_parts (FloatParts): the parts kept float.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    quantize = _quantize_filter(graph, float_parts)
    config = get_symmetric_quantization_config(is_per_channel=True)

    class PartialXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if not quantize(node):
                    node.meta.pop(_ANNOTATION, None)
            _annotate_shared_weight_users(model, config, quantize)
            return model

    quantizer = PartialXNNPACKQuantizer()
    quantizer.set_global(config)
    quantizer.set_filter_function(quantize)
    return quantizer


class ExecuTorchRuntime(Runtime):
    """``torch.export`` + ExecuTorch's XNNPACK delegate; ExecuTorch's runtime to run it.

    Args:
        scan_kernel (bool): SS2D's scans as calls of the kernel ``mmmobilemamba::
            ss2d_scan_graph.out`` (:mod:`.scan_kernel`: built here, and compiled into the
            application on a phone) instead of XNNPACK operators. Default: False.
    """

    name = 'executorch'
    suffix = '.pte'
    packages = ('executorch.exir', 'executorch.runtime',
                'executorch.backends.xnnpack.partition.xnnpack_partitioner')
    install_hint = INSTALL_HINT

    def __init__(self, scan_kernel: bool = False) -> None:
        self.scan_kernel = scan_kernel

    def require(self) -> None:
        super().require()
        if self.scan_kernel:
            build_scan_kernel(self.name)  # before the export: a missing compiler fails fast

    def distributions(self) -> Sequence[str]:
        return ('executorch', 'torchao')

    def adapt(self, network: ExportedNetwork) -> Dict[str, int]:
        from .xnnpack_rewrites import rewrite_modules_for_xnnpack
        replaced = rewrite_modules_for_xnnpack(network, scan_operator=self.scan_kernel)
        return {kind: count for kind, count in replaced.items() if count}

    def _lower(self, program: torch.export.ExportedProgram) -> ExportedBytes:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import \
            XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from .xnnpack_rewrites import xnnpack_decompositions
        program = program.run_decompositions(xnnpack_decompositions())
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        delegation = delegation_report(edge.exported_program().graph_module)
        data = edge.to_executorch().buffer
        record = dict(delegation=delegation)
        if program_calls_scan_kernel(data):
            record['kernels'] = [kernel_record(self.name)]
        return ExportedBytes(data, record)

    def export(self, network: ExportedNetwork, inputs: torch.Tensor,
               output_names: Sequence[str]) -> ExportedBytes:
        return self._lower(torch.export.export(network, (inputs,), strict=False))

    def quantize(self, network: ExportedNetwork, inputs: torch.Tensor,
                 output_names: Sequence[str], float_export: ExportedBytes,
                 calibration: Sequence[torch.Tensor], float_parts: FloatParts) -> ExportedBytes:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = torch.export.export(network, (inputs,), strict=False).module()
        unshare_conv_biases(graph)
        prepared = prepare_pt2e(graph, xnnpack_quantizer(graph, float_parts))
        for image in calibration:
            prepared(image)
        converted = convert_pt2e(prepared)
        return self._lower(torch.export.export(converted, (inputs,), strict=False))

    def load(self, data: Union[bytes, str], threads: Optional[int] = None) -> Session:
        return ExecuTorchSession(data, threads)


class ExecuTorchModel(RuntimeModel):
    """A detector or segmentor whose network runs in ExecuTorch (XNNPACK): ``test_step`` as
    the model's. See :class:`~mmmobilemamba.deploy.runtime_model.RuntimeModel`.

    Args:
        model (nn.Module): the PyTorch detector/segmentor of the exported file.
        pte_file (str): a file written by :func:`export_executorch` (kind 'detector' or
            'segmentor').
        threads (int, optional): ExecuTorch's thread pool size (None: its default).
        pad_to_input_shape (bool): pad smaller images to the exported shape. Default: False.
    """

    runtime_name = 'executorch'

    def __init__(self, model: nn.Module, pte_file: str, threads: Optional[int] = None,
                 pad_to_input_shape: bool = False) -> None:
        super().__init__(model, pte_file, threads, pad_to_input_shape)


def export_executorch(model: nn.Module, kind: str, inputs: torch.Tensor, pte_file: str,
                      verify: bool = False, **kwargs):
    """Export ``model`` to an ExecuTorch ``.pte`` (XNNPACK) for inputs like ``inputs``.

    Args:
        model (nn.Module): the model with its weights, in eval mode; it is not modified.
        kind (str): 'backbone', 'detector' or 'segmentor'.
        inputs (Tensor): a preprocessed input ``(1, 3, H, W)``; fixes the input shape.
        pte_file (str): where to write; ``<pte_file without .pte>.json`` describes it.
        verify (bool): run ExecuTorch's runtime on ``inputs`` and compare with the unfolded
            PyTorch model. Default: False.
        **kwargs: further arguments of :func:`.export_network` (``quantize='int8'``,
            ``calibration``, ``config``, ...).

    Returns:
        ExportResult: what was written and measured (with the delegation report).
    """
    from .export import export_network
    return export_network(model, kind, inputs, pte_file, runtime='executorch', verify=verify,
                          **kwargs)
