"""onnxruntime latency of the exported MobileMamba backbone, against RegNetX-800MF exported the
same way and against PyTorch eager, in one run on this machine; the exported graphs' node
counts and export times, and where onnxruntime spends its time.

    python tools/analysis/benchmark_onnx.py [--arch b1] [--sizes 512] [--repeats 20]
        [--threads N] [--profile] [--compare LABEL=FILE.onnx ...] [--markdown FILE]

Each backbone is exported with mmmobilemamba.deploy.export_onnx (MobileMamba in its export
form, static input) and run by onnxruntime's CPU provider, and in PyTorch eager (MobileMamba
after switch_to_deploy(), its CPU form), batch 1, per input size. The rounds are interleaved so
that a load change on the machine hits all alike; the table gives the median ms/img, each row's
ratio to RegNetX-800MF in onnxruntime at that size, then per exported graph its ONNX nodes (for
MobileMamba also those of its SS2D blocks and, within them, of its scans), the export time and
onnxruntime's difference to PyTorch. ``--profile`` adds onnxruntime's profile of each graph
(``SessionOptions.enable_profiling``): kernel time per op type. ``--compare`` times ONNX files
exported elsewhere (e.g. by an earlier commit) in the same rounds, at the size of their input.
With one thread the table also gives the CPU time of each run (onnxruntime then runs in the
calling thread): on a loaded machine the wall clock also counts the time a run waits for a
core, the CPU time only the work.
"""
import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from mmmobilemamba.analysis.benchmark import publish_report

REFERENCE = 'RegNetX-800MF'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='b1', help='MobileMamba variant (default: b1)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[512],
                        help='square input sides (default: 512)')
    parser.add_argument('--repeats', type=int, default=20, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads of torch and onnxruntime (default: as torch chooses)')
    parser.add_argument('--profile', action='store_true',
                        help="add onnxruntime's kernel time per op type of each graph")
    parser.add_argument('--profile-runs', type=int, default=10)
    parser.add_argument('--no-eager', action='store_true', help='onnxruntime rows only')
    parser.add_argument('--compare', nargs='+', default=[], metavar='LABEL=FILE',
                        help='also time these ONNX files (one image input) at their size')
    parser.add_argument('--markdown', default=None, help='also write the report to this file')
    return parser.parse_args()


def node_counts(onnx_file: str) -> dict:
    """ONNX nodes of the whole graph, of MobileMamba's SS2D blocks and of their scans (the
    nodes under the exporter's ``...ss2d`` / ``...ss2d.graph_form.scan`` module scopes)."""
    import onnx
    counts = collections.Counter()
    for node in onnx.load(onnx_file).graph.node:
        counts['all'] += 1
        scopes = next((p.value for p in node.metadata_props
                       if p.key == 'pkg.torch.onnx.name_scopes'), '')
        if '.ss2d' in scopes:
            counts['ss2d'] += 1
        if '.graph_form.scan' in scopes:
            counts['scan'] += 1
    return dict(counts)


def _session(onnx_file: str, threads: int, profile_prefix=None):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # no busy-waiting between runs: idle onnxruntime threads would slow the other rounds
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])


def profile_by_op(onnx_file: str, x, threads: int, runs: int, directory: str) -> list:
    """``[(op type, ms per run, nodes)]`` by onnxruntime's profiler, longest first."""
    session = _session(onnx_file, threads, os.path.join(directory, 'profile'))
    feed = {'input': x.numpy()}
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    time_us, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
            op = event['args']['op_name']
            time_us[op] += event['dur']
            nodes[op] += 1
    return [(op, us / runs / 1000, nodes[op] // runs) for op, us in time_us.most_common()]


def build_models(arch: str) -> dict:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    name = f'MobileMamba-{arch.upper()}'
    models = {name: MODELS.build(dict(type='MobileMamba', arch=arch)).eval(),
              REFERENCE: MODELS.build(dict(type='RegNet', arch='regnetx_800mf',
                                           out_indices=(0, 1, 2, 3)))}
    models[REFERENCE].eval()  # mmdet's train() returns None: do not chain
    return models


def time_rounds(runners: dict, repeats: int, warmup: int) -> dict:
    """Median wall-clock and calling-thread CPU ms of each runner over interleaved rounds:
    ``{label: (wall, cpu)}``."""
    wall, cpu = ({label: [] for label in runners} for _ in range(2))
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners.values():
                run()
        for _ in range(repeats):
            for label, run in runners.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                run()
                wall[label].append((time.perf_counter() - start) * 1000)
                cpu[label].append((time.thread_time() - start_cpu) * 1000)
    return {label: (statistics.median(wall[label]), statistics.median(cpu[label]))
            for label in runners}


def compared_files(specs) -> list:
    """``[(label, file, (H, W))]`` from ``LABEL=FILE`` arguments (a label may name a file per
    input size)."""
    import onnx
    files = []
    for spec in specs:
        label, sep, path = spec.partition('=')
        if not sep or not os.path.isfile(path):
            raise SystemExit(f'--compare {spec!r}: expected LABEL=FILE.onnx with an existing file')
        dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        files.append((label, path, (dims[2].dim_value, dims[3].dim_value)))
    return files


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    import onnxruntime

    from mmmobilemamba.deploy import export_onnx
    models = build_models(args.arch)
    compared = compared_files(args.compare)
    lines, details, profiles = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            x = torch.randn(1, 3, size, size)
            runners, exports = {}, {}
            for model_name, model in models.items():
                onnx_file = f'{tmp}/{model_name}_{size}.onnx'
                exports[model_name] = (export_onnx(model, 'backbone', x, onnx_file, verify=True),
                                       node_counts(onnx_file))
                session = _session(onnx_file, threads)
                feed = {'input': x.numpy()}
                runners[f'{model_name}, onnxruntime'] = (lambda s=session, f=feed: s.run(None, f))
            for label, path, shape in compared:
                if shape == (size, size):
                    session = _session(path, threads)
                    feed = {session.get_inputs()[0].name: x.numpy()}
                    runners[f'{label}, onnxruntime'] = (lambda s=session, f=feed: s.run(None, f))
            if not args.no_eager:
                for model_name, model in models.items():
                    deployed = _eager(model)
                    runners[f'{model_name}, PyTorch eager'] = (lambda m=deployed: m(x))
            medians = time_rounds(runners, args.repeats, args.warmup)
            wall_ref, cpu_ref = medians[f'{REFERENCE}, onnxruntime']
            for label, (wall, cpu) in medians.items():
                row = f'| {label} | {size}x{size} | {wall:.1f} | {wall / wall_ref:.2f}x |'
                if threads == 1:
                    row += f' {cpu:.1f} | {cpu / cpu_ref:.2f}x |'
                lines.append(row)
            for model_name, (result, counts) in exports.items():
                graph = f'{counts["all"]} ONNX nodes'
                if 'ss2d' in counts:
                    graph += (f' ({counts["ss2d"]} in its SS2D blocks, {counts.get("scan", 0)} '
                              'in their scans)')
                details.append(f'- {model_name} at {size}x{size}: {graph}; export '
                               f'{result.export_seconds:.1f} s; onnxruntime vs PyTorch max rel '
                               f'diff {result.max_rel_diff:.1e}')
            if args.profile:
                for model_name, (result, _) in exports.items():
                    ops = profile_by_op(result.onnx_file, x, threads, args.profile_runs, tmp)
                    total = sum(ms for _, ms, _ in ops)
                    top = ', '.join(f'{op} {ms:.1f} ({nodes})' for op, ms, nodes in ops[:12])
                    profiles.append(f'- {model_name} at {size}x{size}: {total:.1f} ms of kernels '
                                    f'per run; ms by op type (nodes): {top}')
    env = (f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} '
           f'threads, {platform.processor() or platform.machine()}, median of {args.repeats} '
           f'interleaved rounds, load average {os.getloadavg()[0]:.1f} at the end')
    header = '| backbone, runtime | input | ms/img | ratio |'
    rule = '|---|---|---:|---:|'
    if threads == 1:
        header += ' CPU ms/img | ratio |'
        rule += '---:|---:|'
    table = [header, rule] + lines
    text = (f'Ratios are to {REFERENCE} in onnxruntime at the same size, measured in the same '
            f'run ({env}).\n\n' + '\n'.join(table) + '\n\n' + '\n'.join(details) + '\n')
    if profiles:
        text += "\nonnxruntime's profile (kernel time per run):\n\n" + '\n'.join(profiles) + '\n'
    publish_report(text, args.markdown)
    return 0


def _eager(model: torch.nn.Module) -> torch.nn.Module:
    """The model as PyTorch runs it fastest here: MobileMamba in its CPU deploy form (a copy:
    the exports above start from the unfolded model)."""
    import copy
    if not hasattr(model, 'switch_to_deploy'):
        return model
    return copy.deepcopy(model).switch_to_deploy()


if __name__ == '__main__':
    sys.exit(main())
