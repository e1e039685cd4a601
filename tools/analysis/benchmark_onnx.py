"""onnxruntime latency of the exported MobileMamba backbone, against PyTorch eager and against
RegNetX-800MF exported the same way, in one run on this machine.

    python tools/analysis/benchmark_onnx.py [--arch b1] [--size 512] [--repeats 20]
        [--threads N] [--markdown FILE]

Each backbone is exported with mmmobilemamba.deploy.export_onnx (deploy-folded, static
512x512 input) and run by onnxruntime's CPU provider, and in PyTorch eager (MobileMamba after
switch_to_deploy(), under torch.inference_mode), batch 1. The rounds are interleaved so that a
load change on the machine hits all alike; the table gives the median ms/img, each row's ratio
to RegNetX-800MF in onnxruntime, and how long each export took.
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time

import torch

from mmmobilemamba.analysis.benchmark import publish_report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='b1', help='MobileMamba variant (default: b1)')
    parser.add_argument('--size', type=int, default=512, help='square input side')
    parser.add_argument('--repeats', type=int, default=20, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads of torch and onnxruntime (default: as torch chooses)')
    parser.add_argument('--markdown', default=None, help='also write the table to this file')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmmobilemamba.deploy import export_onnx
    register_all_modules()
    name = f'MobileMamba-{args.arch.upper()}'
    models = {name: MODELS.build(dict(type='MobileMamba', arch=args.arch)).eval(),
              'RegNetX-800MF': MODELS.build(dict(type='RegNet', arch='regnetx_800mf',
                                                 out_indices=(0, 1, 2, 3)))}
    models['RegNetX-800MF'].eval()  # mmdet's train() returns None: do not chain
    x = torch.randn(1, 3, args.size, args.size)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # no busy-waiting between runs: idle onnxruntime threads would slow the PyTorch rounds
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    runners, exports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model in models.items():
            result = export_onnx(model, 'backbone', x, f'{tmp}/{model_name}.onnx', verify=True)
            exports[model_name] = result
            session = onnxruntime.InferenceSession(result.onnx_file, options,
                                                   providers=['CPUExecutionProvider'])
            feed = {'input': x.numpy()}
            runners[f'{model_name}, onnxruntime'] = (lambda s=session: s.run(None, feed))
            eager = model.switch_to_deploy() if hasattr(model, 'switch_to_deploy') else model
            runners[f'{model_name}, PyTorch eager'] = (lambda m=eager: m(x))
        times = {label: [] for label in runners}
        with torch.inference_mode():
            for _ in range(args.warmup):
                for run in runners.values():
                    run()
            for _ in range(args.repeats):
                for label, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[label].append((time.perf_counter() - start) * 1000)
    medians = {label: statistics.median(t) for label, t in times.items()}
    reference = medians['RegNetX-800MF, onnxruntime']
    lines = [f'| backbone, runtime | {args.size}x{args.size} ms/img | ratio |', '|---|---:|---:|']
    lines += [f'| {label} | {ms:.1f} | {ms / reference:.2f}x |' for label, ms in medians.items()]
    lines.append('')
    lines += [f'- export of {n}: {r.export_seconds:.1f} s, onnxruntime vs PyTorch max rel diff '
              f'{r.max_rel_diff:.1e}' for n, r in exports.items()]
    env = (f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, '
           f'{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, '
           f'median of {args.repeats} interleaved rounds')
    text = (f'Ratios are to RegNetX-800MF in onnxruntime, measured in the same run ({env}).\n\n'
            + '\n'.join(lines) + '\n')
    publish_report(text, args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
