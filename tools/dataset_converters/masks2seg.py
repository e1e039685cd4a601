"""Copy images and label-map PNGs into the ADE20K layout read by mmseg.

Output labels: 0 = ignore, classes 1..K (read with ``reduce_zero_label=True``).

Examples::

    # masks already hold 0 (ignore) and 1..5
    python tools/dataset_converters/masks2seg.py imgs masks data/my_seg --num-classes 5
    # masks hold 0..4 for classes and 255 for ignore: shift by one
    python tools/dataset_converters/masks2seg.py imgs masks data/my_seg --num-classes 5 \
        --split validation --map 0:1 1:2 2:3 3:4 4:5 255:0
"""
import argparse
import sys
from pathlib import Path

# Allow running from a checkout without `pip install -e .`.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from mmmobilemamba.datasets.converters import masks_to_seg_layout  # noqa: E402


def value_map_arg(pairs):
    """``['0:1', '255:0']`` -> ``{0: 1, 255: 0}``."""
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        src, sep, dst = pair.partition(':')
        if not sep:
            raise argparse.ArgumentTypeError(f'--map entries look like SRC:DST, got {pair!r}')
        mapping[int(src)] = int(dst)
    return mapping


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('img_dir', help='folder of images')
    parser.add_argument('mask_dir', help='folder of <image stem>.png label maps')
    parser.add_argument('out_dir', help='dataset root to write')
    parser.add_argument('--num-classes', type=int, required=True,
                        help='K; output values must be in 0..K')
    parser.add_argument('--split', default='training', help='training or validation')
    parser.add_argument('--map', nargs='+', metavar='SRC:DST',
                        help='remap mask values; values not listed are an error')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = masks_to_seg_layout(args.img_dir, args.mask_dir, args.out_dir,
                                      args.num_classes, args.split,
                                      value_map=value_map_arg(args.map))
    except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{summary["img_dir"]}, {summary["ann_dir"]}: {summary["num_images"]} pairs; '
          f'pixels per label 0..K: {summary["class_pixels"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
