#!/usr/bin/env python
"""Train a detector or segmentor from an mmdet/mmseg config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-GPU: tools/dist_train.sh CONFIG GPUS [options]. The logic is in
mmmobilemamba.engine.launch.
"""
import sys

from mmmobilemamba.engine.launch import train_main

if __name__ == '__main__':
    sys.exit(train_main())
