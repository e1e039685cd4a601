#!/usr/bin/env python
"""Export a detector, a segmentor or a MobileMamba backbone to ONNX (onnxruntime-checked).

    python tools/deployment/export_onnx.py CONFIG [CHECKPOINT] --shape H W --out FILE.onnx
        [--backbone-only] [--verify] [--quantize int8 [--calib-images N]] [--evaluate]
        [--scan-kernel]

Example (the quickstart RetinaNet after `make demo`):
    python tools/deployment/export_onnx.py configs/quickstart/retinanet_mobilemamba_demo-coco.py \
        work_dirs/retinanet_mobilemamba_demo-coco/epoch_60.pth --shape 384 384 \
        --out outputs/retinanet_demo.onnx --verify

The input is one image after the config's data preprocessor (normalised, padded), with a
static shape; FILE.json beside FILE.onnx says what was exported. Detectors export their raw
head outputs and segmentors their logits: mmmobilemamba.deploy.OnnxRuntimeModel runs a file
with mmdet's / mmseg's post-processing. --quantize int8 writes onnxruntime QDQ int8 calibrated
on training images of the config. --scan-kernel: each SS2D scan one node of the custom op
mmmobilemamba.SS2DScan instead of ~60 ONNX nodes, run by this project's custom-op library
(built here with the C++ compiler; an application registers it with onnxruntime). See
docs/deployment.md.
"""
import sys

from mmmobilemamba.deploy.cli import MAX_REL_DIFF, main  # noqa: F401  (MAX_REL_DIFF: the bound)

if __name__ == '__main__':
    sys.exit(main('onnxruntime', __doc__.split('\n')[0]))
