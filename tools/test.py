#!/usr/bin/env python
"""Evaluate a checkpoint (COCO box/mask AP, or mIoU/aAcc) with an mmdet/mmseg config.

    python tools/test.py CONFIG CHECKPOINT [--out RESULTS.pkl] [--show-dir DIR] [--tta]
                         [--work-dir DIR] [--cfg-options KEY=VALUE ...] [--launcher ...]

Multi-GPU: tools/dist_test.sh CONFIG CHECKPOINT GPUS [options]. The logic is in
mmmobilemamba.engine.launch.
"""
import sys

from mmmobilemamba.engine.launch import test_main

if __name__ == '__main__':
    sys.exit(test_main())
