"""Profile an ONNX file in onnxruntime (CPU): node time per operator type, from its profiler.

    python tools/analysis/profile_onnxruntime.py b1.onnx [--runs 5] [--threads 1] [--top 15]
    python tools/analysis/profile_onnxruntime.py other.onnx --shape 512 512

The input is random, shaped as the file's record (``b1.json``, written by
``tools/deployment/export_onnx.py``) says, or ``(1, 3, H, W)`` by ``--shape`` for a file
without one; the timings are onnxruntime's own node events (median per run over ``--runs``
runs), summed by the operator types of the graph onnxruntime optimised.
"""
import argparse
import sys
from typing import Optional, Sequence

import torch

from mmmobilemamba.analysis.executorch_profile import format_profile
from mmmobilemamba.analysis.onnxruntime_profile import profile_onnxruntime
from mmmobilemamba.deploy import read_record


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('onnx', help='an ONNX file with its JSON record beside it')
    parser.add_argument('--runs', type=int, default=5, help='profiled runs (default: 5)')
    parser.add_argument('--threads', type=int, default=1,
                        help="onnxruntime's intra-op threads (default: 1)")
    parser.add_argument('--top', type=int, default=15, help='types listed (default: 15)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input (1, 3, H, W) for a file without a record')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.shape:
        shape = [1, 3, *args.shape]
    else:
        try:
            record = read_record(args.onnx)
        except (FileNotFoundError, ValueError) as err:
            print(f'error: {err} (or give --shape H W)', file=sys.stderr)
            return 2
        if record.get('runtime') != 'onnxruntime':
            print(f'error: {args.onnx} is a {record.get("runtime")} export, not onnxruntime\'s',
                  file=sys.stderr)
            return 2
        shape = record['input_shape']
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    profile = profile_onnxruntime(args.onnx, inputs, runs=args.runs, threads=args.threads)
    print(f'{args.onnx}: input {tuple(shape)}, {args.threads} thread(s), '
          f'median of {args.runs} runs')
    print(format_profile(profile, args.top, whole='onnxruntime run',
                         column='operator (onnxruntime)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
