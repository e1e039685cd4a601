"""The command line of the profile tools (``tools/analysis/profile_executorch.py``,
``profile_onnxruntime.py``): the file, its input shape from its record or ``--shape``, the
runtime's profile by operator kind as a table."""
import argparse
import sys
from typing import Optional, Sequence

import torch

__all__ = ['profile_tool']

# runtime -> (its name, file description, thread option's help, the profile's whole, its
# first column)
_RUNTIMES = {
    'executorch': ('ExecuTorch', 'an ExecuTorch program', "ExecuTorch's thread pool size",
                   'XNNPACK delegate', 'operator (XNNPACK)'),
    'onnxruntime': ('onnxruntime', 'an ONNX file', "onnxruntime's intra-op threads",
                    'onnxruntime run', 'operator (onnxruntime)'),
}


def _parse_args(runtime: str, description: str,
                argv: Optional[Sequence[str]]) -> argparse.Namespace:
    what, threads_help = _RUNTIMES[runtime][1:3]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('file', help=f'{what} with its JSON record beside it')
    parser.add_argument('--runs', type=int, default=5, help='profiled runs (default: 5)')
    parser.add_argument('--threads', type=int, default=1, help=f'{threads_help} (default: 1)')
    parser.add_argument('--top', type=int, default=15, help='kinds listed (default: 15)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input (1, 3, H, W) for a file without a record')
    return parser.parse_args(argv)


def profile_tool(runtime: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run a profile tool.

    Args:
        runtime (str): 'executorch' or 'onnxruntime'.
        description (str): the tool's one-line description.
        argv (Sequence[str], optional): the arguments (default: ``sys.argv[1:]``).

    Returns:
        int: the exit status (2: no shape for the file, or another runtime's file).
    """
    from mmmobilemamba.deploy import read_record

    from .executorch_profile import format_profile
    args = _parse_args(runtime, description, argv)
    if args.shape:
        shape = [1, 3, *args.shape]
    else:
        try:
            record = read_record(args.file)
        except (FileNotFoundError, ValueError) as err:
            print(f'error: {err} (or give --shape H W)', file=sys.stderr)
            return 2
        if record.get('runtime') != runtime:
            print(f'error: {args.file} is a {record.get("runtime")} export, not '
                  f'{_RUNTIMES[runtime][0]}\'s', file=sys.stderr)
            return 2
        shape = record['input_shape']
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if runtime == 'executorch':
        from .executorch_profile import profile_executorch as profile
    else:
        from .onnxruntime_profile import profile_onnxruntime as profile
    times = profile(args.file, inputs, runs=args.runs, threads=args.threads)
    print(f'{args.file}: input {tuple(shape)}, {args.threads} thread(s), '
          f'median of {args.runs} runs')
    whole, column = _RUNTIMES[runtime][3:]
    print(format_profile(times, args.top, whole=whole, column=column))
    return 0
