"""Time MobileMamba against mmdet backbones of similar cost, in one run, on this machine.

    python tools/analysis/benchmark_backbone.py [--archs b1 t2] [--sizes 224 512 1024]
        [--threads N] [--repeats 10] [--markdown docs/benchmarks_backbone_latest.md]

Every backbone runs forward in eval mode, batch 1, under ``torch.inference_mode`` (MobileMamba
after ``switch_to_deploy()``). References are measured in the same run, interleaved round by
round so that a load change on the machine hits all models alike; the table gives the median
ms/img and each model's ratio to RegNetX-800MF (same FLOPs as MobileMamba-B1).
"""
import argparse
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from mmmobilemamba.analysis.backbones import (REFERENCE_BACKBONES, backbone_label,
                                               build_backbone)
from mmmobilemamba.analysis.benchmark import publish_report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', nargs='+', default=['b1'], help='MobileMamba variants')
    parser.add_argument('--sizes', nargs='+', type=int, default=[224, 512, 1024])
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: as torch chooses)')
    parser.add_argument('--repeats', type=int, default=10, help='timed rounds per size')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--no-references', action='store_true')
    parser.add_argument('--channels-last', action='store_true',
                        help='feed every model a channels-last (NHWC) input, the usual way to '
                             'run a CNN channels-last (MobileMamba computes in NHWC on CPU '
                             'either way)')
    parser.add_argument('--markdown', default=None, help='also write the table to this file')
    return parser.parse_args()


def build_models(archs: List[str], with_references: bool, device: str) -> Dict[str, torch.nn.Module]:
    keys = list(archs) + (list(REFERENCE_BACKBONES) if with_references else [])
    models = {}
    for key in keys:
        model = build_backbone(key)
        if key in archs:
            model.switch_to_deploy(device=device)  # the deploy form for that device
        models[backbone_label(key)] = model
    return {name: m.to(device) for name, m in models.items()}


def time_once(model: Callable, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def benchmark(models, sizes, repeats, warmup, device,
              channels_last: bool = False) -> Dict[int, Dict[str, float]]:
    results = {}
    with torch.inference_mode():
        for size in sizes:
            x = torch.randn(1, 3, size, size, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for model in models.values():
                for _ in range(warmup):
                    model(x)
            times = {name: [] for name in models}
            for _ in range(repeats):  # interleaved rounds
                for name, model in models.items():
                    times[name].append(time_once(model, x))
            results[size] = {name: statistics.median(t) for name, t in times.items()}
            print(f'  {size}x{size}: ' + ', '.join(f'{n} {v:.1f} ms' for n, v in results[size].items()),
                  file=sys.stderr)
    return results


def format_table(results: Dict[int, Dict[str, float]], reference: str) -> str:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    head = '| backbone | ' + ' | '.join(f'{s}x{s} ms/img | ratio' for s in sizes) + ' |'
    rule = '|---|' + '---:|---:|' * len(sizes)
    lines = [head, rule]
    for name in names:
        cells = []
        for s in sizes:
            ms = results[s][name]
            ratio = ms / results[s][reference] if reference in results[s] else float('nan')
            cells.append(f'{ms:.1f} | {ratio:.2f}x')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    if len(sizes) >= 2:
        lines.append('')
        lo, hi = sizes[-2], sizes[-1]
        pixels = (hi / lo)**2
        for name in names:
            growth = results[hi][name] / results[lo][name]
            lines.append(f'- {name}: {lo}->{hi} time x{growth:.2f} for x{pixels:.0f} pixels')
    return '\n'.join(lines)


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args.archs, not args.no_references, args.device)
    reference = 'RegNetX-800MF' if not args.no_references else next(iter(models))
    results = benchmark(models, args.sizes, args.repeats, args.warmup, args.device,
                        args.channels_last)
    env = (f'torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, '
           f'{platform.processor() or platform.machine()}, '
           f'{"channels-last" if args.channels_last else "NCHW"} input')
    table = format_table(results, reference)
    text = f'Ratios are to {reference} measured in the same run ({env}).\n\n{table}\n'
    publish_report(text, args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
