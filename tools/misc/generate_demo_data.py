"""Generate the built-in synthetic demo datasets (no download, seconds on a CPU).

Examples::

    python tools/misc/generate_demo_data.py                 # both, under data/
    python tools/misc/generate_demo_data.py --task det --num-train 50 --num-val 10
    python tools/misc/generate_demo_data.py --task seg --out-root /tmp/data --force

Writes ``<out-root>/demo_coco`` (COCO instances) and ``<out-root>/demo_ade``
(ADE20K layout). A second run with the same options finds the data complete and
returns at once.
"""
import argparse
import sys
from pathlib import Path

# Allow running from a checkout without `pip install -e .`.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from mmmobilemamba.datasets.synthetic import (  # noqa: E402
    generate_ade_shapes, generate_coco_shapes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', choices=('det', 'seg', 'all'), default='all',
                        help='det: COCO shapes, seg: ADE20K-layout shapes, all: both')
    parser.add_argument('--out-root', default='data',
                        help='parent folder of demo_coco/ and demo_ade/ (default: data)')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset (default: 200)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images per dataset (default: 50)')
    parser.add_argument('--image-size', type=int, default=None,
                        help='square image side (default: 192 det, 160 seg)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true',
                        help='regenerate even when matching data exists')
    return parser.parse_args(argv)


def describe(summary: dict) -> str:
    state = 'already complete' if summary['skipped'] else f'written in {summary["seconds"]} s'
    counts = ', '.join(f'{split}: {info["num_images"]} images'
                       for split, info in summary['splits'].items())
    return f'{summary["root"]}: {state} ({counts})'


def main(argv=None) -> int:
    args = parse_args(argv)
    common = dict(seed=args.seed, force=args.force)
    for key in ('num_train', 'num_val', 'image_size'):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    root = Path(args.out_root)
    if args.task in ('det', 'all'):
        print(describe(generate_coco_shapes(root / 'demo_coco', **common)))
    if args.task in ('seg', 'all'):
        print(describe(generate_ade_shapes(root / 'demo_ade', **common)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
