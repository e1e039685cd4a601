#!/usr/bin/env python
"""The deployment table: MobileMamba B1/T2 backbones (224x224 and 512x512) and the quickstart
RetinaNet / Semantic FPN in PyTorch eager, onnxruntime fp32/int8 and ExecuTorch (XNNPACK)
fp32/int8, on 1 and 2 threads, next to RegNetX-800MF and MobileNetV2 exported the same way;
on request onnxruntime and ExecuTorch with the project's scan kernels
(onnxruntime-kernel-fp32 / -int8, executorch-kernel-fp32 / -int8).

    python tools/analysis/benchmark_deploy.py [--models b1 t2 regnetx_800mf mobilenetv2
        retinanet_demo fpn_demo] [--sizes 224 512] [--runtimes pytorch onnxruntime-fp32 ...]
        [--threads 1 2] [--rounds 10] [--work-dir work_dirs/benchmark_deploy]
        [--markdown FILE] [--chart docs/deploy_latency.png]

Exports are cached in --work-dir, keyed by the package's source and the runtimes' versions (a
first run exports everything: about 20 minutes on 2 cores; later runs time only). Rounds are
interleaved within each block of rows (the backbones at one size; the quickstart models);
ratios are to RegNetX-800MF in the same runtime, precision and threads. int8 exports are
calibrated on 8 synthetic images (enough for their speed and size; accuracy is measured by
--evaluate of tools/deployment/export_onnx.py and tools/deployment/export_executorch.py on
real images). Weights are random.
"""
import argparse
import sys

from mmmobilemamba.analysis.benchmark import publish_report
from mmmobilemamba.analysis.deploy_benchmark import (BENCHMARK_MODELS, COLUMN_OPTIONS,
                                                     RUNTIME_COLUMNS, DeployBenchmark,
                                                     draw_chart, environment, format_tables)

# the columns that need the project's ExecuTorch scan kernel (a C++ compiler) are asked for
DEFAULT_COLUMNS = [column for column in RUNTIME_COLUMNS if column not in COLUMN_OPTIONS]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=list(BENCHMARK_MODELS),
                        choices=list(BENCHMARK_MODELS), metavar='MODEL',
                        help=f'rows, of {list(BENCHMARK_MODELS)} (default: all)')
    parser.add_argument('--sizes', nargs='+', type=int, default=[224, 512],
                        help='square input sides of the backbones (default: 224 512)')
    parser.add_argument('--runtimes', nargs='+', default=DEFAULT_COLUMNS,
                        choices=list(RUNTIME_COLUMNS), metavar='RUNTIME',
                        help=f'columns, of {list(RUNTIME_COLUMNS)} (default: all but the '
                        f'scan kernel\'s, {list(COLUMN_OPTIONS)}, which build it with the C++ '
                        'compiler)')
    parser.add_argument('--threads', nargs='+', type=int, default=[1, 2],
                        help='thread counts (default: 1 2)')
    parser.add_argument('--rounds', type=int, default=10, help='timed rounds per block')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds per block')
    parser.add_argument('--work-dir', default='work_dirs/benchmark_deploy',
                        help='export cache (default: work_dirs/benchmark_deploy)')
    parser.add_argument('--fresh', action='store_true', help='export again, ignoring the cache')
    parser.add_argument('--markdown', default=None, help='also write the tables to this file')
    parser.add_argument('--chart', default=None, metavar='FILE.png',
                        help='draw the latency table into this PNG (docs/deploy_latency.png)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        benchmark = DeployBenchmark(args.work_dir, args.models, args.sizes, args.runtimes,
                                    args.threads, args.rounds, args.warmup, args.fresh,
                                    log=lambda message: print(message, file=sys.stderr))
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    env = environment()
    rows = benchmark.run()
    text = (f'{env}.\n\n'
            + format_tables(rows, args.runtimes, args.threads, args.rounds))
    publish_report(text, args.markdown)
    if args.chart:
        draw_chart(rows, args.runtimes, args.threads, args.chart,
                   'Latency per image, batch 1 (tools/analysis/benchmark_deploy.py)')
        print(f'chart: {args.chart}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
