"""Draw a model's predictions on an image: boxes/masks (mmdet) or segmentation (mmseg).

Example:
    python tools/demo.py data/demo_coco/val/shapes_val_00000.jpg \
        configs/quickstart/retinanet_mobilemamba_demo-coco.py \
        work_dirs/retinanet_mobilemamba_demo-coco/epoch_60.pth --out-dir outputs   # after make demo
"""
import argparse
import sys

from mmmobilemamba.apis import run_demo
from mmmobilemamba.engine.image_loading import ImageLoadError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='input image')
    parser.add_argument('config', help='detection or segmentation config file')
    parser.add_argument('checkpoint', help='model weights')
    parser.add_argument('--out-dir', required=True,
                        help='output folder: the drawing goes to OUT_DIR/vis/<image name>, '
                        'the predictions to OUT_DIR/preds/ (boxes .json, label maps .png)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections below this score are not drawn (default: 0.3)')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        out_file = run_demo(args.image, args.config, args.checkpoint, args.out_dir,
                            device=args.device, score_thr=args.score_thr)
    except (FileNotFoundError, ImageLoadError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'saved {out_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
