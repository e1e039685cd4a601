"""Where an ExecuTorch program's time goes: XNNPACK's own operator timings, by kind.

ExecuTorch's runtime records an event per XNNPACK operator when it runs a program with an
ETDump (the event tracer its Python bindings are built with); its ``Inspector`` reads them.
The events are named by XNNPACK's operator kinds ("Fully Connected (NC, F32) GEMM #12",
"Convolution (NHWC, F32) IGEMM #3", "Batch Matrix Multiply (NC, F32) GEMM #1"): summed by kind
they say which kernels a network spends its time in, in the runtime a phone runs.
"""
import collections
import os
import re
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

__all__ = ['OperatorTime', 'profile_executorch', 'format_profile']

# events that wrap others (the program, the method, the delegate call) or load the program
_WRAPPERS = ('Method::execute', 'Program::load_method', 'Method::init', 'DELEGATE_CALL',
             'OPERATOR_CALL')


@dataclass
class OperatorTime:
    """One kind of operator: its time per run (ms, summed over its instances) and how many
    instances a run has."""

    kind: str
    ms: float
    count: int


def _kind(event_name: str) -> str:
    """'Convolution (NHWC, F32) IGEMM #3' -> 'Convolution (NHWC, F32) IGEMM'."""
    return re.sub(r' #\d+$', '', event_name)


def profile_executorch(pte_file: str, inputs: torch.Tensor, runs: int = 5,
                       threads: Optional[int] = None) -> List[OperatorTime]:
    """Run ``pte_file`` ``runs`` times with ExecuTorch's event tracer and sum each operator
    kind's median time per run.

    Args:
        pte_file (str): an ExecuTorch program (e.g. written by ``export_executorch.py``).
        inputs (Tensor): its input, shaped as exported.
        runs (int): profiled runs (after one untimed run). Default: 5.
        threads (int, optional): ExecuTorch's thread pool size (None: as it is).

    Returns:
        list[OperatorTime]: by kind, longest first; the delegate call's total is the kind
        ``'total'`` (first).
    """
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    from mmmobilemamba.deploy.executorch import set_threads
    from mmmobilemamba.deploy.scan_kernel import load_scan_kernel_if_called

    if runs < 1:
        raise ValueError(f'runs must be at least 1, got {runs}')
    if threads:
        set_threads(threads)
    load_scan_kernel_if_called(str(pte_file))
    program = _load_for_executorch(str(pte_file), enable_etdump=True, debug_buffer_size=0)
    inputs = inputs.float().contiguous()
    for _ in range(runs + 1):
        program.forward((inputs,))
    with tempfile.TemporaryDirectory() as tmp:
        etdump = os.path.join(tmp, 'profile.etdp')
        program.write_etdump_result_to_file(etdump)
        del program
        inspector = Inspector(etdump_path=etdump)
    times, counts = collections.Counter(), collections.Counter()
    total = 0.0
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None:
                continue
            median = sorted(event.perf_data.raw)[len(event.perf_data.raw) // 2]
            if event.name == 'DELEGATE_CALL':
                total += median
            if event.name in _WRAPPERS:
                continue
            kind = _kind(event.name)
            times[kind] += median
            counts[kind] += 1
    return [OperatorTime('total', total, 1)] + [OperatorTime(kind, ms, counts[kind])
                                                for kind, ms in times.most_common()]


def format_profile(profile: Sequence[OperatorTime], top: int = 15,
                   whole: str = 'XNNPACK delegate', column: str = 'operator (XNNPACK)') -> str:
    """The profile as a markdown table: kind, ms per run, share of the whole's time,
    instances.

    Args:
        profile (Sequence[OperatorTime]): as :func:`profile_executorch` (or onnxruntime's
            profile) returns it.
        top (int): kinds listed. Default: 15.
        whole (str): what the total is the time of. Default: 'XNNPACK delegate'.
        column (str): the first column's header. Default: 'operator (XNNPACK)'.
    """
    total = profile[0].ms if profile and profile[0].kind == 'total' else \
        sum(p.ms for p in profile)
    lines = [f'{whole}: {total:.2f} ms per run', '',
             f'| {column} | ms | share | count |', '|---|---:|---:|---:|']
    for entry in [p for p in profile if p.kind != 'total'][:top]:
        lines.append(f'| {entry.kind} | {entry.ms:.2f} | {entry.ms / total:.0%} | '
                     f'{entry.count} |')
    return '\n'.join(lines)
