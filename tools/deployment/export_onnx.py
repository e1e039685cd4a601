#!/usr/bin/env python
"""Export a detector, a segmentor or a MobileMamba backbone to ONNX (onnxruntime-checked).

    python tools/deployment/export_onnx.py CONFIG [CHECKPOINT] --shape H W --out FILE.onnx
                                           [--backbone-only] [--verify]

Example (the quickstart RetinaNet after `make demo`):
    python tools/deployment/export_onnx.py configs/quickstart/retinanet_mobilemamba_demo-coco.py \
        work_dirs/retinanet_mobilemamba_demo-coco/epoch_60.pth --shape 384 384 \
        --out outputs/retinanet_demo.onnx --verify

The input is one image after the config's data preprocessor (normalised, padded), with a
static shape; FILE.json beside FILE.onnx says what was exported. Detectors export their raw
head outputs and segmentors their logits: mmmobilemamba.deploy.OnnxRuntimeModel runs a file
with mmdet's / mmseg's post-processing. See docs/deployment.md.
"""
import argparse
import sys

from mmengine.config import DictAction

from mmmobilemamba.deploy import export_config

MAX_REL_DIFF = 1e-4  # --verify fails above this


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='detection or segmentation config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='weights (our layout or the authors\' released files); random '
                        'weights without it')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width, before the data preprocessor pads it '
                        '(default: 800 1280 for detection, 512 512 for segmentation)')
    parser.add_argument('--out', required=True, metavar='FILE.onnx', help='output file')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the MobileMamba backbone alone (its three maps)')
    parser.add_argument('--verify', action='store_true',
                        help='run onnxruntime on the same input and compare with PyTorch '
                        f'(exit 1 above {MAX_REL_DIFF:g} relative)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = export_config(args.config, args.checkpoint, shape=args.shape,
                               onnx_file=args.out, backbone_only=args.backbone_only,
                               verify=args.verify, cfg_options=args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(result.summary())
    if args.verify and result.max_rel_diff > MAX_REL_DIFF:
        print(f'error: onnxruntime differs from PyTorch by {result.max_rel_diff:.3g} relative '
              f'(more than {MAX_REL_DIFF:g})', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
