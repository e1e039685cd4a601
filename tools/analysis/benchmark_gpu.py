"""The backbone table of the GPU check, with its targets (issue 19, item 6), in one markdown
report.

    python tools/analysis/benchmark_gpu.py [--device cuda] [--archs b1 t2]
        [--references regnetx_800mf resnet18 resnet50 mobilenetv2]
        [--settings 256x256 32x512 8x1024] [--dtypes fp32 bf16]
        [--forms eager deployed deployed-channels-last deployed-cpu-form compiled]
        [--compile [MODE]] [--compile-at 32x512] [--compile-dtypes bf16]
        [--compile-models b1 regnetx_800mf] [--train-setting 16x512] [--kernels-at 32x512]
        [--graph-size 512] [--repeats 10] [--warmup 3] [--budget-s S] [--json run.json]
        [--markdown report.md]

Only the measurements some targets need (``eval``: B1 deployed and RegNetX-800MF eager at
512² b32, fp32 and bf16, and the deployed form channels-last in bf16; ``train``: the training
steps at 512² b16; ``compiled``: B1 compiled and RegNetX eager, bf16), what the GPU check runs
first, each part with its own time limit:
    python tools/analysis/benchmark_gpu.py --targets eval --json targets_eval.json

Re-render saved runs as one report, with whole-model comparisons' figures
(``tools/analysis/benchmark.py --compare ... --json whole.json``) and the targets:
    python tools/analysis/benchmark_gpu.py --from-json targets_eval.json run.json \
        --whole-model-json maskrcnn.json fpn.json --note 'cuda tests: 82 passed' \
        --markdown gpu_report.md

What is measured and how: :mod:`mmmobilemamba.analysis.gpu_benchmark`. On a CPU (for tests)
it runs with tiny settings; kernel counts, CUDA graphs and memory are skipped with a note.
"""
import argparse
import json
import sys

from mmmobilemamba.analysis.benchmark import publish_report
from mmmobilemamba.analysis.gpu_benchmark import (COMPILE_MODES, MM_FORMS, TARGET_CELLS,
                                                  GpuBenchmark, format_report, merge_results,
                                                  parse_setting, save_json)


def _setting(text: str):
    try:
        return parse_setting(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _optional_setting(text: str):
    return None if text.lower() == 'none' else _setting(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (default: cuda)')
    parser.add_argument('--archs', nargs='+', default=['b1', 't2'], help='MobileMamba archs')
    parser.add_argument('--references', nargs='*',
                        default=['regnetx_800mf', 'resnet18', 'resnet50', 'mobilenetv2'],
                        help='mmdet backbones (regnetx_800mf, the reference of the ratios; '
                        'resnet18, resnet50, mobilenetv2)')
    parser.add_argument('--settings', nargs='+', type=_setting,
                        default=[(256, 256), (32, 512), (8, 1024)], metavar='BxS',
                        help='eval batch x image size (default: 256x256 32x512 8x1024)')
    parser.add_argument('--dtypes', nargs='+', choices=('fp32', 'bf16'), default=['fp32', 'bf16'])
    parser.add_argument('--forms', nargs='+', choices=MM_FORMS, default=list(MM_FORMS),
                        help='MobileMamba forms (references: eager, compiled)')
    parser.add_argument('--compile', nargs='?', const='default', default='default',
                        choices=COMPILE_MODES, metavar='MODE',
                        help=f'torch.compile mode of the compiled form, one of {COMPILE_MODES} '
                        '(default: default)')
    parser.add_argument('--compile-backend', default='inductor',
                        help="torch.compile backend (default: inductor; 'eager' for tests)")
    parser.add_argument('--compile-at', nargs='+', type=_setting, default=[(32, 512)],
                        metavar='BxS', help='settings of the compiled form (default: 32x512)')
    parser.add_argument('--compile-dtypes', nargs='+', choices=('fp32', 'bf16'),
                        default=['bf16'], help='dtypes of the compiled form (default: bf16)')
    parser.add_argument('--compile-models', nargs='+', default=['b1', 'regnetx_800mf'],
                        help='backbones compiled (default: b1 regnetx_800mf); each compile '
                        'takes up to a minute')
    parser.add_argument('--cpu-form-at', nargs='+', type=_setting, default=[(32, 512)],
                        metavar='BxS',
                        help='settings of the deployed-cpu-form (default: 32x512)')
    parser.add_argument('--train-setting', type=_optional_setting, default=(16, 512),
                        metavar='BxS', help="training step batch x size, 'none' to skip "
                        '(default: 16x512)')
    parser.add_argument('--train-models', nargs='+', default=None,
                        help='backbones trained (default: all)')
    parser.add_argument('--kernels-at', type=_optional_setting, default=(32, 512),
                        metavar='BxS', help="kernel count batch x size, 'none' to skip "
                        '(default: 32x512)')
    parser.add_argument('--kernel-models', nargs='+', default=['b1', 'regnetx_800mf'],
                        help='backbones profiled (default: b1 regnetx_800mf)')
    parser.add_argument('--graph-size', type=int, default=512,
                        help='CUDA-graph latency image size (batch 1, fp32), 0 to skip')
    parser.add_argument('--graph-models', nargs='+', default=['b1', 'regnetx_800mf'],
                        help='backbones of the CUDA-graph latency (default: b1 regnetx_800mf)')
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per cell')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls first')
    parser.add_argument('--budget-s', type=float, default=None,
                        help='skip the remaining measurements after this many seconds')
    parser.add_argument('--json', help='write the results there (after every measurement)')
    parser.add_argument('--markdown', help='also write the report there (after every '
                        'measurement, so a killed run leaves what it measured)')
    parser.add_argument('--targets', nargs='+', choices=sorted(TARGET_CELLS), metavar='PART',
                        help='measure only what these targets need, in this order: '
                        f'{", ".join(sorted(TARGET_CELLS))}')
    parser.add_argument('--from-json', nargs='+', metavar='FILE',
                        help='render the report of saved runs (merged) instead of measuring')
    parser.add_argument('--whole-model-json', nargs='+', metavar='FILE',
                        help='add the whole-model comparisons saved by tools/analysis/'
                        'benchmark.py --compare ... --json FILE (and their targets)')
    parser.add_argument('--note', action='append', default=[],
                        help='a line for the top of the report (repeatable)')
    return parser.parse_args(argv)


def _load_whole_model(paths):
    """The whole-model figures of every file and their notes; a missing or broken file
    becomes a note."""
    figures, notes, problems = [], [], []
    for path in paths or ():
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            problems.append(f'whole-model figures unreadable ({type(err).__name__}: {err})')
            continue
        figures += saved.get('figures') or []
        if saved.get('note'):
            notes.append(saved['note'])
    return figures or None, '; '.join(notes), problems


def _load_runs(paths):
    """The saved backbone runs, merged; a missing or broken file becomes a note."""
    runs, problems = [], []
    for path in paths:
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as err:
            # the report still says what else was measured
            problems.append(f'backbone results unreadable ({type(err).__name__}: {err})')
    merged = merge_results(runs)
    if problems and merged['environment'] == '?':
        merged['environment'] = '; '.join(problems)
    else:
        merged['notes'] += problems
    return merged


def main(argv=None) -> int:
    args = parse_args(argv)
    whole_model, whole_note, problems = _load_whole_model(args.whole_model_json)
    notes = list(args.note) + problems

    def render(results):
        return format_report(results, whole_model, whole_note if whole_model else '', notes)

    if args.from_json:
        publish_report(render(_load_runs(args.from_json)), args.markdown)
        return 0

    def save(results):
        if args.json:
            save_json(results, args.json)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(f'Command: `python {" ".join(sys.argv)}` (partial)\n\n{render(results)}')

    bench = GpuBenchmark(
        device=args.device, archs=args.archs, references=args.references,
        settings=args.settings, dtypes=args.dtypes, forms=args.forms, repeats=args.repeats,
        warmup=args.warmup, compile_mode=None if args.compile == 'default' else args.compile,
        compile_backend=args.compile_backend, compile_at=args.compile_at,
        compile_dtypes=args.compile_dtypes, compile_models=args.compile_models,
        cpu_form_at=args.cpu_form_at, train_setting=args.train_setting,
        train_models=args.train_models, kernels_at=args.kernels_at,
        kernel_models=args.kernel_models, graph_size=args.graph_size or None,
        graph_models=args.graph_models, budget_s=args.budget_s, on_update=save)
    if args.targets:
        results = bench.run_cells([cell for part in args.targets for cell in TARGET_CELLS[part]])
    else:
        results = bench.run()
    if args.json:
        save_json(results, args.json)
    publish_report(render(results), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
