"""The command line shared by ``tools/deployment/export_onnx.py`` and ``export_executorch.py``.

Exit status: 0 done; 1 written but outside a tolerance (``--verify``: float32 more than 1e-4
relative from PyTorch, int8 not finite; ``--evaluate``: the metric more than 0.2 points
(float32) or 1 point (int8) below PyTorch's); 2 bad input, nothing written.
"""
import argparse
import math
import sys
from typing import List, Optional, Sequence

from mmengine.config import DictAction

from .export import DEFAULT_CALIB_IMAGES, QUANTIZE_MODES, export_config
from .quantization import DEFAULT_FLOAT_PARTS, FLOAT_PART_MODULES
from .record import ExportResult
from .runtime import get_runtime

__all__ = ['MAX_METRIC_DROP', 'MAX_REL_DIFF', 'build_parser', 'check_result', 'main']

MAX_REL_DIFF = 1e-4  # --verify, float32: fails above this
# --evaluate: how far (points: box mAP x 100, mIoU) the export may fall below PyTorch
MAX_METRIC_DROP = {'fp32': 0.2, 'int8': 1.0}


def build_parser(runtime: str, description: str, example_suffix: str) -> argparse.ArgumentParser:
    """The arguments of an export tool.

    Args:
        runtime (str): 'onnxruntime' or 'executorch'.
        description (str): the tool's one-line description.
        example_suffix (str): '.onnx' or '.pte', for the help.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help='detection or segmentation config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='weights (our layout or the authors\' released files); random '
                        'weights without it')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width, before the data preprocessor pads it '
                        '(default: 800 1280 for detection, 512 512 for segmentation)')
    parser.add_argument('--out', required=True, metavar=f'FILE{example_suffix}',
                        help='output file; FILE.json beside it is its record')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the MobileMamba backbone alone (its three maps)')
    parser.add_argument('--verify', action='store_true',
                        help=f'run {runtime} on the same input and compare with PyTorch '
                        f'(float32: exit 1 above {MAX_REL_DIFF:g} relative; int8: also its '
                        'latency against the float export)')
    parser.add_argument('--quantize', choices=QUANTIZE_MODES, default=None,
                        help='post-training static quantisation, calibrated on '
                        '--calib-images training images of the config\'s data set')
    parser.add_argument('--calib-images', type=int, default=DEFAULT_CALIB_IMAGES, metavar='N',
                        help=f'calibration images with --quantize (default: '
                        f'{DEFAULT_CALIB_IMAGES})')
    parser.add_argument('--float-parts', nargs='*', default=list(DEFAULT_FLOAT_PARTS),
                        choices=sorted(FLOAT_PART_MODULES), metavar='PART',
                        help=f'with --quantize, MobileMamba parts kept float, of '
                        f'{sorted(FLOAT_PART_MODULES)} (default: {" ".join(DEFAULT_FLOAT_PARTS)}'
                        '; none: give the option without a value)')
    parser.add_argument('--evaluate', action='store_true',
                        help='evaluate the written file on the config\'s test set next to the '
                        'PyTorch model (metrics into the record; exit 1 when the metric falls '
                        f'more than {MAX_METRIC_DROP["fp32"]} point float32 / '
                        f'{MAX_METRIC_DROP["int8"]} int8 below)')
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                        action=DictAction, help='override config entries')
    kernel_help = {
        'executorch': 'this project\'s ExecuTorch kernel (mmmobilemamba/deploy/csrc/'
                      'ss2d_scan.cpp, built here with the C++ compiler; an application compiles '
                      'it in) instead of as XNNPACK operators',
        'onnxruntime': 'one node of the custom op mmmobilemamba.SS2DScan, run by this '
                       'project\'s custom-op library (mmmobilemamba/deploy/csrc/'
                       'ss2d_scan_onnxruntime.cpp, built here with the C++ compiler; an '
                       'application registers it) instead of as ~60 ONNX nodes',
    }
    parser.add_argument('--scan-kernel', action='store_true',
                        help=f'run each SS2D scan by {kernel_help[runtime]}')
    return parser


def check_result(result: ExportResult, verified: bool) -> List[str]:
    """The tolerances ``result`` misses, as messages (empty: all met).

    Args:
        result (ExportResult): an export's record.
        verified (bool): whether it was run against PyTorch.
    """
    problems = []
    if verified and result.precision == 'fp32' and not result.max_rel_diff <= MAX_REL_DIFF:
        problems.append(f'{result.runtime} differs from PyTorch by {result.max_rel_diff:.3g} '
                        f'relative (more than {MAX_REL_DIFF:g})')
    if verified and result.precision != 'fp32' and not math.isfinite(result.max_abs_diff):
        problems.append(f'the {result.precision} file gives non-finite outputs')
    if result.evaluation:
        evaluation = result.evaluation
        metric, points = evaluation['metric'], evaluation['points_per_unit']
        values = list(evaluation['metrics'].values())
        ours, theirs = values[0].get(metric), values[-1].get(metric)
        allowed = MAX_METRIC_DROP.get(result.precision, MAX_METRIC_DROP['int8'])
        if ours is None or theirs is None:
            problems.append(f'{metric} missing from the evaluation')
        elif (ours - theirs) * points > allowed:
            problems.append(f'{metric} of the {result.precision} file is '
                            f'{(ours - theirs) * points:.2f} points below PyTorch\'s '
                            f'(allowed: {allowed})')
    return problems


def main(runtime: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run an export tool.

    Args:
        runtime (str): 'onnxruntime' or 'executorch'.
        description (str): the tool's docstring's first line.
        argv (Sequence[str], optional): the arguments (default: ``sys.argv[1:]``).

    Returns:
        int: the exit status (see the module docstring).
    """
    from mmmobilemamba.engine.config import ConfigError

    from .runtime import RuntimeNotInstalledError
    from .scan_kernel import ScanKernelError

    suffix = get_runtime(runtime).suffix
    args = build_parser(runtime, description, suffix).parse_args(argv)
    if not args.out.endswith(suffix):
        print(f'error: --out must be a {suffix} file for {runtime}, got {args.out}',
              file=sys.stderr)
        return 2
    try:
        result = export_config(
            args.config, args.checkpoint, shape=args.shape, out_file=args.out,
            backbone_only=args.backbone_only, verify=args.verify, cfg_options=args.cfg_options,
            runtime=runtime, quantize=args.quantize, calib_images=args.calib_images,
            float_parts=args.float_parts, evaluate=args.evaluate,
            runtime_options=dict(scan_kernel=True) if getattr(args, 'scan_kernel', False)
            else None)
    except (FileNotFoundError, ValueError, ConfigError, RuntimeNotInstalledError,
            ScanKernelError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(result.summary())
    problems = check_result(result, args.verify)
    for problem in problems:
        print(f'error: {problem}', file=sys.stderr)
    return 1 if problems else 0
