"""Inference latency (ms/img) and FPS of the detector/segmentor of a config, batch 1.

Example:
    python tools/analysis/benchmark.py configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py \
        weights/downstream/det/retinanet.pth \
        --device cuda --num-iters 200 --fuse
"""
import argparse

from mmengine.config import DictAction

from mmmobilemamba.analysis.benchmark import config_benchmark


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection or segmentation config file')
    parser.add_argument('checkpoint', nargs='?', help='weights (random weights if omitted)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width (default: 800 1280 for detection, '
                        '512 512 for segmentation)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    parser.add_argument('--num-iters', type=int, default=50,
                        help='timed iterations (default: 50)')
    parser.add_argument('--warmup', type=int, default=5,
                        help='untimed iterations first (default: 5)')
    parser.add_argument('--fuse', action='store_true',
                        help='re-parameterise MobileMamba and fuse conv+BN first')
    parser.add_argument('--mode', choices=('predict', 'tensor'), default='predict',
                        help='predict: preprocessing + network + post-processing; '
                        'tensor: the network alone (default: predict)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=t2')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result = config_benchmark(args.config, args.checkpoint, shape=args.shape,
                              device=args.device, num_iters=args.num_iters,
                              warmup=args.warmup, fuse=args.fuse, mode=args.mode,
                              cfg_options=args.cfg_options)
    print(result.summary())


if __name__ == '__main__':
    main()
