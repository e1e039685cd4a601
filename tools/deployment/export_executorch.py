#!/usr/bin/env python
"""Export a detector, a segmentor or a MobileMamba backbone to ExecuTorch (.pte, XNNPACK).

    python tools/deployment/export_executorch.py CONFIG [CHECKPOINT] --shape H W --out FILE.pte
        [--backbone-only] [--verify] [--quantize int8 [--calib-images N]] [--evaluate]
        [--scan-kernel]

Example (the quickstart RetinaNet after `make demo`, float32 and int8):
    python tools/deployment/export_executorch.py \
        configs/quickstart/retinanet_mobilemamba_demo-coco.py \
        work_dirs/retinanet_mobilemamba_demo-coco/epoch_60.pth --shape 384 384 \
        --out outputs/retinanet_demo.pte --verify --evaluate
    python tools/deployment/export_executorch.py ... --out outputs/retinanet_demo_int8.pte \
        --quantize int8 --calib-images 32 --verify --evaluate

The .pte runs in ExecuTorch's runtime on Android and iOS (XNNPACK linked) and here, through
its Python runtime (--verify: against PyTorch, with the share of the graph XNNPACK runs).
FILE.json beside FILE.pte records the input shape, the outputs and the preprocessing an
application applies. Detectors export their raw head outputs and segmentors their logits:
mmmobilemamba.deploy.ExecuTorchModel runs a file with mmdet's / mmseg's post-processing.
--scan-kernel: SS2D's scans by this project's ExecuTorch kernel (built here with the C++
compiler, cached; compiled into an application beside ExecuTorch). See docs/deployment.md.
"""
import sys

from mmmobilemamba.deploy.cli import main

if __name__ == '__main__':
    sys.exit(main('executorch', __doc__.split('\n')[0]))
