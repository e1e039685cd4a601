"""ONNX export of MobileMamba backbones, detectors and segmentors, run with onnxruntime.

What is exported and how it is post-processed: :mod:`.network`, :mod:`.runtime_model`. Here:
the ONNX steps. The network in MobileMamba's export form (``switch_to_deploy('export')``: plain
ops, the selective scan a fixed set of large ops whatever the map size) goes through
``torch.onnx.export(..., dynamo=True)``, opset 18; nothing needs CUDA, and nothing needs a
compiled kernel unless ``scan_kernel`` is asked for (below). The input shape is static (one
export per input size), as the scan's chunking depends on the feature-map sizes.

int8: onnxruntime's QDQ static quantisation (``onnxruntime.quantization.quantize_static``)
calibrated on the images given: weights int8 symmetric per output channel, activations uint8
per tensor (min/max), the form onnxruntime's x86 kernels run fastest (u8 x s8 products).
The nodes of the parts kept float (:mod:`.quantization`) are excluded by name, found from the
module hierarchy the exporter writes into each node's metadata.

With ``scan_kernel`` (``export_onnx.py --scan-kernel``) each SS2D scan is one node
``mmmobilemamba.SS2DScan`` instead of ~60 graph nodes, run by this project's custom-op library
(:mod:`.scan_kernel`); a session registers the library for a file that has such nodes. Any
onnxruntime from 1.17 on loads it; other ONNX runtimes do not know the op.
"""
import ast
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .network import (EXPORT_KINDS, ExportedNetwork, compare_outputs, prepare_for_export,
                      set_scan_form)
from .quantization import FloatParts
from .record import ExportResult
from .runtime import ExportedBytes, Runtime, Session
from .runtime_model import RuntimeModel
from .scan_kernel import (ONNX_DOMAIN, ONNX_OPERATOR, build_scan_kernel, kernel_record,
                          register_scan_kernel_if_called)

__all__ = ['EXPORT_KINDS', 'ExportResult', 'ExportedNetwork', 'OPSET', 'OnnxRuntime',
           'OnnxRuntimeModel', 'OnnxRuntimeSession', 'compare_outputs', 'export_config',
           'export_onnx', 'prepare_for_export']

OPSET = 18
# what onnxruntime's QDQ quantiser may quantise: the compute ops and the data movement between
# them (the exported graph's Softplus, Exp, ReduceSum and LayerNormalization are not listed)
QUANTIZED_OP_TYPES = ('Conv', 'MatMul', 'Gemm', 'Add', 'Mul', 'Relu', 'Clip', 'Sigmoid',
                      'Concat', 'Resize', 'MaxPool', 'AveragePool', 'GlobalAveragePool',
                      'Reshape', 'Transpose', 'Slice', 'Split', 'Pad', 'DepthToSpace',
                      'SpaceToDepth')


class OnnxRuntimeSession(Session):
    """An onnxruntime ``InferenceSession`` (CPU) on an exported file.

    Args:
        data (bytes | str): the ONNX file's content or path.
        threads (int, optional): intra-op threads (None: onnxruntime's default, the cores).
        allow_spinning (bool): let idle worker threads spin (onnxruntime's default, fastest
            alone); benchmarks interleaving several runtimes turn it off. Default: True.
    """

    def __init__(self, data: Union[bytes, str], threads: Optional[int] = None,
                 allow_spinning: bool = True) -> None:
        import onnxruntime
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not allow_spinning:
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        register_scan_kernel_if_called(options, data)
        self.session = onnxruntime.InferenceSession(data, options,
                                                    providers=['CPUExecutionProvider'])
        self.threads = threads or _physical_cores()

    def run(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        outputs = self.session.run(None, {'input': inputs.float().cpu().numpy()})
        return [torch.from_numpy(np.asarray(out)) for out in outputs]


def _physical_cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` over preprocessed images."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:
        self._images = iter([{'input': image.numpy()} for image in images])

    def get_next(self):
        return next(self._images, None)


def _calibrate_with_scan_kernel(source: str, augmented: str, images: Sequence[torch.Tensor],
                                ranges: str) -> None:
    """onnxruntime's min/max calibration (as ``quantize_static`` runs it for the operator types
    it quantises) of the model at ``source``, in a session that has the scan kernel; the
    ranges are written to ``ranges`` (a calibration cache)."""
    import onnxruntime
    from onnxruntime.quantization import MinMaxCalibrater, save_tensors_data

    class Calibrater(MinMaxCalibrater):
        def create_inference_session(self):
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            # only called for a model with the scan's nodes: no search of the file for them
            options.register_custom_ops_library(build_scan_kernel('onnxruntime'))
            self.infer_session = onnxruntime.InferenceSession(
                self.augmented_model_path, options, providers=['CPUExecutionProvider'])

    calibrater = Calibrater(source, list(QUANTIZED_OP_TYPES), augmented)
    calibrater.augment_graph()
    calibrater.create_inference_session()
    calibrater.collect_data(_Calibration(images))
    save_tensors_data(calibrater.compute_data(), ranges)


def _float_nodes(model, parts: FloatParts) -> List[str]:
    """Names of the nodes of ``model`` (an ONNX ModelProto) in the parts kept float."""
    names = []
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if 'pkg.torch.onnx.class_hierarchy' not in meta:
            continue  # a node the exporter added (constants, casts): no module
        classes = ast.literal_eval(meta['pkg.torch.onnx.class_hierarchy'])
        scopes = ast.literal_eval(meta.get('pkg.torch.onnx.name_scopes', '[]'))
        hierarchy = list(zip(scopes[:-1], classes[:-1])) if len(scopes) == len(classes) \
            else [('', c) for c in classes[:-1]]
        op_name = node.op_type if node.op_type == 'Conv' else classes[-1]
        if parts.part_of(hierarchy, op_name, node.name):
            names.append(node.name)
    return names


def _scan_translation() -> dict:
    """The exporter's translation of ``mmmobilemamba::ss2d_scan_graph`` into the custom op's
    node."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset
    # the op's signature for the exporter (onnxruntime learns the op from the library)
    schema = OpSchema(
        ONNX_OPERATOR, ONNX_DOMAIN, 1,
        doc='SS2D\'s two-direction selective scan (mmmobilemamba::ss2d_scan_graph)',
        inputs=[OpSchema.FormalParameter(name, 'T')
                for name in ('u', 'delta', 'A', 'B', 'C', 'skip')],
        outputs=[OpSchema.FormalParameter('y', 'T')],
        type_constraints=[('T', ['tensor(float)'], 'float32 only')])
    scan_op = Op(Opset(ONNX_DOMAIN, 1), ONNX_OPERATOR, schema)

    def ss2d_scan(u, delta, A, B, C, skip):
        return scan_op(u, delta, A, B, C, skip)

    return {torch.ops.mmmobilemamba.ss2d_scan_graph.default: ss2d_scan}


class OnnxRuntime(Runtime):
    """``torch.onnx`` export, onnxruntime (CPU) to run it.

    Args:
        scan_kernel (bool): SS2D's scans as nodes of the custom op ``mmmobilemamba.SS2DScan``
            (:mod:`.scan_kernel`: built here; a session registers the library) instead of
            graph operators. Default: False.
    """

    name = 'onnxruntime'
    suffix = '.onnx'
    packages = ('onnx', 'onnxscript', 'onnxruntime')
    install_hint = ('pip install -r requirements/deploy.txt (onnx, onnxscript, onnxruntime; '
                    '`make setup` installs it)')

    def __init__(self, scan_kernel: bool = False) -> None:
        self.scan_kernel = scan_kernel

    def require(self) -> None:
        super().require()
        if self.scan_kernel:
            build_scan_kernel('onnxruntime')  # before the export: a missing compiler fails fast

    def distributions(self) -> Sequence[str]:
        return ('onnx', 'onnxscript', 'onnxruntime')

    def adapt(self, network: ExportedNetwork) -> Dict[str, int]:
        if not self.scan_kernel:
            return {}
        switched = set_scan_form(network, 'one_operator')
        return {'GraphScan.one_operator': switched} if switched else {}

    def export(self, network: ExportedNetwork, inputs: torch.Tensor,
               output_names: Sequence[str]) -> ExportedBytes:
        program = torch.onnx.export(
            network, (inputs,), None, dynamo=True, opset_version=OPSET, input_names=['input'],
            output_names=list(output_names), verbose=False,
            custom_translation_table=_scan_translation() if self.scan_kernel else None)
        model = program.model_proto
        calls = sum(node.op_type == ONNX_OPERATOR and node.domain == ONNX_DOMAIN
                    for graph in [model.graph, *model.functions] for node in graph.node)
        record = dict(kernels=[kernel_record(self.name)]) if calls else {}
        return ExportedBytes(model.SerializeToString(), record)

    def quantize(self, network: ExportedNetwork, inputs: torch.Tensor,
                 output_names: Sequence[str], float_export: ExportedBytes,
                 calibration: Sequence[torch.Tensor], float_parts: FloatParts) -> ExportedBytes:
        import onnx
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        model = onnx.load_from_string(float_export.data)
        excluded = _float_nodes(model, float_parts)
        with tempfile.TemporaryDirectory() as tmp:
            source, target = osp.join(tmp, 'fp32.onnx'), osp.join(tmp, 'int8.onnx')
            with open(source, 'wb') as f:
                f.write(float_export.data)
            ranges = None
            if float_export.record.get('kernels'):
                # quantize_static's own calibration session cannot load the custom op: the
                # ranges are measured here and handed over as its calibration cache
                ranges = osp.join(tmp, 'ranges.json')
                _calibrate_with_scan_kernel(source, osp.join(tmp, 'augmented.onnx'),
                                            calibration, ranges)
            quantize_static(source, target, None if ranges else _Calibration(calibration),
                            calibration_cache_path=ranges,
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=dict(WeightSymmetric=True, ActivationSymmetric=False))
            with open(target, 'rb') as f:
                return ExportedBytes(f.read(), dict(float_export.record))  # its kernels

    def finalize(self, exported: ExportedBytes) -> ExportedBytes:
        """Without the exporter's per-node metadata (module paths, stack traces: about 1 MB
        in the quickstart RetinaNet's 8.6 MB), which the quantiser reads and runtimes do not."""
        import onnx
        model = onnx.load_from_string(exported.data)
        for node in model.graph.node:
            del node.metadata_props[:]
        return ExportedBytes(model.SerializeToString(), exported.record)

    def load(self, data: Union[bytes, str], threads: Optional[int] = None) -> Session:
        return OnnxRuntimeSession(data, threads)


class OnnxRuntimeModel(RuntimeModel):
    """A detector or segmentor whose network runs in onnxruntime: ``test_step`` as the model's.

    See :class:`~mmmobilemamba.deploy.runtime_model.RuntimeModel`.

    Args:
        model (nn.Module): the PyTorch detector/segmentor of the exported file.
        onnx_file (str): a file written by :func:`export_onnx` (kind 'detector' or
            'segmentor').
        threads (int, optional): onnxruntime's intra-op threads (None: its default).
        pad_to_input_shape (bool): pad smaller images to the exported shape. Default: False.
    """

    runtime_name = 'onnxruntime'

    def __init__(self, model: nn.Module, onnx_file: str, threads: Optional[int] = None,
                 pad_to_input_shape: bool = False) -> None:
        super().__init__(model, onnx_file, threads, pad_to_input_shape)


def export_onnx(model: nn.Module, kind: str, inputs: torch.Tensor, onnx_file: str,
                verify: bool = False, config: Optional[str] = None,
                checkpoint: Optional[str] = None, preprocessing: Optional[dict] = None,
                **kwargs) -> ExportResult:
    """Export ``model`` to ONNX for inputs like ``inputs`` (see :func:`.export_network`).

    Args:
        model (nn.Module): the model with its weights, in eval mode; it is not modified.
        kind (str): 'backbone', 'detector' or 'segmentor'.
        inputs (Tensor): a preprocessed input ``(1, 3, H, W)``; fixes the input shape.
        onnx_file (str): where to write; ``<onnx_file without .onnx>.json`` describes it.
        verify (bool): run onnxruntime (CPU) on ``inputs`` and compare with the unfolded
            PyTorch model. Default: False.
        config (str, optional): recorded in the JSON.
        checkpoint (str, optional): recorded in the JSON.
        preprocessing (dict, optional): recorded in the JSON.
        **kwargs: further arguments of :func:`.export_network` (``quantize='int8'``,
            ``calibration``, ...).

    Returns:
        ExportResult: what was written and, with ``verify``, the differences.
    """
    from .export import export_network
    return export_network(model, kind, inputs, onnx_file, runtime='onnxruntime', verify=verify,
                          config=config, checkpoint=checkpoint, preprocessing=preprocessing,
                          **kwargs)


def __getattr__(name: str):
    """``export_config``, which this module held before the shared export path."""
    if name == 'export_config':
        from .export import export_config
        return export_config
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
