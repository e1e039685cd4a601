"""Deployment: ONNX export of backbones, detectors and segmentors, run with onnxruntime."""
from .onnx import (EXPORT_KINDS, ExportedNetwork, ExportResult, OnnxRuntimeModel,
                   compare_outputs, export_config, export_onnx, prepare_for_export)

__all__ = ['EXPORT_KINDS', 'ExportResult', 'ExportedNetwork', 'OnnxRuntimeModel',
           'compare_outputs', 'export_config', 'export_onnx', 'prepare_for_export']
