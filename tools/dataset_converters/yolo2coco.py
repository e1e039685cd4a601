"""Convert YOLO txt labels (boxes or polygon segments) to a COCO instances JSON.

Examples::

    python tools/dataset_converters/yolo2coco.py datasets/coco8/labels/val \
        --img-dir datasets/coco8/images/val --classes datasets/coco8/data.yaml \
        --out coco8_val.json
    python tools/dataset_converters/yolo2coco.py labels --img-dir images \
        --classes cat dog --out train.json
"""
import argparse
import sys
from pathlib import Path

# Allow running from a checkout without `pip install -e .`.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from mmmobilemamba.datasets.converters import yolo_to_coco  # noqa: E402


def classes_arg(values):
    """One existing file (classes.txt / data.yaml) or the class names themselves."""
    return values[0] if len(values) == 1 and Path(values[0]).is_file() else values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('label_dir', help='folder of YOLO .txt label files')
    parser.add_argument('--img-dir', required=True, help='folder of the images')
    parser.add_argument('--classes', nargs='+', required=True,
                        help='class names, or one classes.txt / data.yaml file')
    parser.add_argument('--out', required=True, help='output COCO JSON')
    parser.add_argument('--allow-orphans', action='store_true',
                        help='warn (instead of failing) on label files without an image')
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='slack for normalised values outside [0, 1] (clipped)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        coco = yolo_to_coco(args.label_dir, args.img_dir, classes_arg(args.classes), args.out,
                            strict=not args.allow_orphans, tolerance=args.tolerance)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{args.out}: {len(coco["images"])} images, {len(coco["annotations"])} objects, '
          f'{len(coco["categories"])} classes')
    return 0


if __name__ == '__main__':
    sys.exit(main())
