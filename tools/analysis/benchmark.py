"""Speed of whole detectors/segmentors: one config's latency, or the paper's models against
mmdet/mmseg's with a standard backbone in the same head.

One config, inference latency (ms/img) and FPS, batch 1:
    python tools/analysis/benchmark.py configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py \
        weights/downstream/det/retinanet.pth \
        --device cuda --num-iters 200 --fuse

The paper's models against their peers: latency, training step time and peak training memory,
measured in the same run with the ratios to the peer (RegNetX-800MF, ResNet-18/50, MobileNetV2):
    python tools/analysis/benchmark.py --compare all --det-shape 512 512 \
        --markdown docs/benchmarks_models_latest.md
    python tools/analysis/benchmark.py --compare RetinaNet 'Mask R-CNN' --device cuda

--compile [MODE] torch.compiles the backbone and neck (``extract_feat``) first; the first call
(compiling) is reported on its own, the timings are the steady state:
    python tools/analysis/benchmark.py configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py \
        --device cuda --compile max-autotune
"""
import argparse
import dataclasses
import json
import sys
import traceback
from pathlib import Path

from mmengine.config import DictAction

from mmmobilemamba.analysis.benchmark import COMPILE_MODES, config_benchmark, publish_report

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', help='detection or segmentation config file')
    parser.add_argument('checkpoint', nargs='?', help='weights (random weights if omitted)')
    parser.add_argument('--compare', nargs='+', metavar='TASK',
                        help="compare the paper's models with their peers instead: 'all' or "
                        'task names (RetinaNet, "Mask R-CNN", "SSDLite 320", "Semantic FPN", '
                        'DeepLabv3, PSPNet)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width of one config (default: 800 1280 for '
                        'detection, 512 512 for segmentation)')
    parser.add_argument('--det-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='--compare: detection image (default 800 1280; SSDLite: 320 320)')
    parser.add_argument('--seg-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='--compare: segmentation image (default 512 512)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    parser.add_argument('--num-iters', type=int, default=None,
                        help='timed inference iterations (default: 50; --compare: 10 rounds)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed iterations first (default: 5; --compare: 2 rounds)')
    parser.add_argument('--train-batch', type=int, default=2,
                        help='--compare: images per training step, 0 to skip (default: 2)')
    parser.add_argument('--train-iters', type=int, default=3,
                        help='--compare: timed training rounds (default: 3)')
    parser.add_argument('--no-memory', action='store_true',
                        help='--compare: skip the peak memory (a fresh process per model)')
    parser.add_argument('--markdown', help='--compare: also write the table to this file')
    parser.add_argument('--json', help='--compare: also write the figures to this file (JSON: '
                        '"note" and "figures", one dict per model)')
    parser.add_argument('--compile', nargs='?', const='default', choices=COMPILE_MODES,
                        metavar='MODE', help='torch.compile the backbone and neck first, mode '
                        f'one of {COMPILE_MODES} (default: default); the first call, '
                        'compiling, is reported on its own')
    parser.add_argument('--fuse', action='store_true',
                        help='re-parameterise MobileMamba and fuse conv+BN first')
    parser.add_argument('--mode', choices=('predict', 'tensor'), default='predict',
                        help='predict: preprocessing + network + post-processing; '
                        'tensor: the network alone (default: predict)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=t2')
    args = parser.parse_args()
    if (args.config is None) == (args.compare is None):
        parser.error('give a config, or --compare (not both)')
    return args


def compare(args: argparse.Namespace) -> int:
    import torch

    from mmmobilemamba.analysis.compare import (PAPER_COMPARISONS, format_comparisons,
                                                run_comparison)
    known = {c.task.lower(): c for c in PAPER_COMPARISONS}
    wanted = [t.lower() for t in args.compare]
    if wanted == ['all']:
        wanted = list(known)
    unknown = [t for t in wanted if t not in known]
    if unknown:
        print(f'unknown task(s) {unknown}; choose from {[c.task for c in PAPER_COMPARISONS]} '
              "or 'all'", file=sys.stderr)
        return 2
    shapes = {'mmdet': args.det_shape, 'mmseg': args.seg_shape}
    device = args.device if args.device != 'cpu' else f'cpu, {torch.get_num_threads()} threads'
    memory = ('max_memory_allocated' if args.device.startswith('cuda')
              else 'highest RSS during the steps above RSS before them')
    compiled = (f'; backbone + neck torch.compile(mode={args.compile!r}), first call '
                'not timed' if args.compile else '')
    note = (f'torch {torch.__version__}, {device}; latency: test_step, batch 1; train step: '
            f'batch {args.train_batch}, SGD; peak memory: {memory}{compiled}; ratios to the '
            'first peer.')
    results, failed = [], []
    for task in wanted:
        try:
            figures = run_comparison(
                known[task], REPO, device=args.device,
                shapes={k: v for k, v in shapes.items() if v},
                num_iters=args.num_iters or 10, warmup=2 if args.warmup is None else args.warmup,
                train_batch=args.train_batch, train_iters=args.train_iters,
                memory=not args.no_memory, compile_mode=args.compile)
        except Exception:  # the other tasks still run; the exit code says it
            failed.append(known[task].task)
            traceback.print_exc()
            continue
        results.append(figures)
        print('\n'.join(format_comparisons([figures]).splitlines()[2:]), file=sys.stderr)
        if args.json:  # after every task: a run cut short keeps what it measured
            with open(args.json, 'w') as f:
                json.dump({'note': note, 'figures': [dataclasses.asdict(fig) for figs in results
                                                     for fig in figs]}, f, indent=1)
    text = f'{note}\n\n{format_comparisons(results)}\n'
    first_calls = [f'{f.task} / {f.label} {f.first_call_ms / 1000:.1f} s' for figures in results
                   for f in figures if f.first_call_ms is not None]
    if first_calls:
        text += f'\nFirst call (compiling): {", ".join(first_calls)}\n'
    if failed:
        text += f'\nFailed (traceback above): {", ".join(failed)}\n'
    publish_report(text, args.markdown)
    return 1 if failed else 0


def main() -> int:
    args = parse_args()
    if args.compare:
        return compare(args)
    result = config_benchmark(args.config, args.checkpoint, shape=args.shape,
                              device=args.device, num_iters=args.num_iters or 50,
                              warmup=5 if args.warmup is None else args.warmup, fuse=args.fuse,
                              mode=args.mode, cfg_options=args.cfg_options,
                              compile_mode=args.compile)
    print(result.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
