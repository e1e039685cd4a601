"""Time the selective scan, forward + backward, per backend on MobileMamba's shapes.

    python tools/analysis/benchmark_scan.py --device cuda
    python tools/analysis/benchmark_scan.py --shapes 2x4200x320 2x1050x512 --repeats 20

A shape is BATCHxLxD: batch, tokens of the map (H*W) and inner channels of one direction. The
defaults are MobileMamba-B1's three stages for two 1333x800 images (stride 16, 32, 64). Ratios
are to the PyTorch scan ('torch') measured in the same run.
"""
import argparse
import sys

import torch

from mmmobilemamba.analysis.scan_speed import available_backends, time_scan_backends

DEFAULT_SHAPES = ['2x4200x320', '2x1050x512', '2x273x544']


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='+', default=DEFAULT_SHAPES,
                        help=f'BATCHxLxD (default: {" ".join(DEFAULT_SHAPES)})')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N] (default: cpu)')
    parser.add_argument('--backends', nargs='+',
                        help='default: every backend that runs here')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: CUDA is not available here', file=sys.stderr)
        return 2
    backends = args.backends or available_backends(device)
    print(f'torch {torch.__version__}, {args.device}; forward + backward, both directions, '
          "median ms; ratio to 'torch'\n")
    print('| batch x L x D | ' + ' | '.join(f'{b} ms | ratio' for b in backends) + ' |')
    print('|---|' + '---:|---:|' * len(backends))
    for shape in args.shapes:
        try:
            batch, length, channels = (int(v) for v in shape.lower().split('x'))
        except ValueError:
            print(f'bad shape {shape!r}: expected BATCHxLxD, e.g. 2x4200x320', file=sys.stderr)
            return 2
        ms = time_scan_backends(batch, length, channels, args.device, backends,
                                repeats=args.repeats, warmup=args.warmup)
        ref = ms.get('torch')
        cells = [f'{ms[b]:.2f} | ' + (f'{ms[b] / ref:.2f}x' if ref else '-') for b in backends]
        print(f'| {shape} | ' + ' | '.join(cells) + ' |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
