"""Convert Pascal VOC XML annotations to a COCO instances JSON.

Examples::

    python tools/dataset_converters/voc2coco.py VOC2012/Annotations \
        --img-dir VOC2012/JPEGImages --ids VOC2012/ImageSets/Main/val.txt \
        --classes classes.txt --out annotations/voc12_val.json
    python tools/dataset_converters/voc2coco.py my_xmls --img-dir my_images \
        --classes cat dog --difficult skip --out my.json
"""
import argparse
import sys
from pathlib import Path

# Allow running from a checkout without `pip install -e .`.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from mmmobilemamba.datasets.converters import DIFFICULT_MODES, voc_to_coco  # noqa: E402


def classes_arg(values):
    """One existing file (classes.txt / data.yaml) or the class names themselves."""
    return values[0] if len(values) == 1 and Path(values[0]).is_file() else values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('ann_dir', help='folder of VOC .xml files')
    parser.add_argument('--img-dir', help='folder of the images (required unless '
                        '--no-check-images)')
    parser.add_argument('--classes', nargs='+', required=True,
                        help='class names, or one classes.txt / data.yaml file')
    parser.add_argument('--out', required=True, help='output COCO JSON')
    parser.add_argument('--ids', help='ImageSets-style txt file selecting <id>.xml')
    parser.add_argument('--difficult', choices=DIFFICULT_MODES, default='iscrowd',
                        help='difficult objects: iscrowd (ignored by COCO eval, default), '
                        'skip, or keep as normal objects')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop objects of classes not listed instead of failing')
    parser.add_argument('--clip-boxes', action='store_true',
                        help='clip boxes leaving the image instead of failing')
    parser.add_argument('--no-check-images', action='store_true',
                        help='do not require the image files (sizes come from the XML)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        coco = voc_to_coco(args.ann_dir, args.img_dir, classes_arg(args.classes), args.out,
                           ids=args.ids, difficult=args.difficult,
                           skip_unknown=args.skip_unknown, clip_boxes=args.clip_boxes,
                           check_images=not args.no_check_images)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{args.out}: {len(coco["images"])} images, {len(coco["annotations"])} objects, '
          f'{len(coco["categories"])} classes')
    return 0


if __name__ == '__main__':
    sys.exit(main())
