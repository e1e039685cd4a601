"""Deployment: backbones, detectors and segmentors exported to ONNX (onnxruntime) and to
ExecuTorch (XNNPACK, the phone runtime), in float32 or int8, verified against PyTorch and run
with mmdet's / mmseg's own post-processing.

One export path (:mod:`.export`: fold, export, quantise, verify, record) serves both runtimes;
each adds what is its own (:mod:`.onnx`, :mod:`.executorch`). Nothing here imports a runtime
package until it is used.
"""
from .executorch import (ExecuTorchModel, ExecuTorchRuntime, ExecuTorchSession,
                         delegation_report, export_executorch)
from .export import (QUANTIZE_MODES, UnsupportedModelError, app_preprocessing, export_config,
                     export_network)
from .network import (EXPORT_KINDS, ExportedNetwork, compare_outputs, output_groups,
                      prepare_for_export)
from .onnx import OnnxRuntime, OnnxRuntimeModel, OnnxRuntimeSession, export_onnx
from .quantization import DEFAULT_FLOAT_PARTS, FLOAT_PART_MODULES, FloatParts
from .record import ExportResult, read_record, record_path
from .runtime import RuntimeNotInstalledError, get_runtime
from .runtime_model import RuntimeModel, model_class
from .scan_kernel import ScanKernelError, build_scan_kernel, load_scan_kernel

__all__ = ['DEFAULT_FLOAT_PARTS', 'EXPORT_KINDS', 'ExecuTorchModel', 'ExecuTorchRuntime',
           'ExecuTorchSession', 'ExportResult', 'ExportedNetwork', 'FLOAT_PART_MODULES',
           'FloatParts', 'OnnxRuntime', 'OnnxRuntimeModel', 'OnnxRuntimeSession',
           'QUANTIZE_MODES', 'RuntimeModel', 'RuntimeNotInstalledError', 'ScanKernelError',
           'UnsupportedModelError', 'app_preprocessing', 'build_scan_kernel', 'compare_outputs',
           'delegation_report', 'export_config', 'export_executorch', 'export_network',
           'export_onnx', 'get_runtime', 'load_scan_kernel', 'model_class', 'output_groups',
           'prepare_for_export', 'read_record', 'record_path']
