"""Parameters and FLOPs of the detector/segmentor of a config (selective scan included).

Example:
    python tools/analysis/get_flops.py configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py \
        --shape 800 1280
"""
import argparse

from mmengine.config import DictAction

from mmmobilemamba.analysis import config_complexity


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection or segmentation config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width (default: 800 1280 for detection, '
                        '512 512 for segmentation); padded as at test time')
    parser.add_argument('--max-depth', type=int, default=3,
                        help='depth of the per-module table (default: 3)')
    parser.add_argument('--show-arch', action='store_true',
                        help='also print the model annotated with per-module statistics')
    parser.add_argument('--device', default='cpu', help='device to trace on (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=t2')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    report = config_complexity(args.config, shape=args.shape, cfg_options=args.cfg_options,
                               max_depth=args.max_depth, show_arch=args.show_arch,
                               device=args.device)
    print(report.table)
    if args.show_arch:
        print(report.arch)
    print(report.summary())


if __name__ == '__main__':
    main()
