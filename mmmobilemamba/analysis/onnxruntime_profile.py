"""Where an ONNX file's time goes in onnxruntime (CPU): the kernel time of each node, by operator
type, from onnxruntime's own profiler.

onnxruntime times every node it runs when a session is created with profiling on, and writes the
events as JSON. The node types are those of the graph onnxruntime optimised (``FusedConv``,
``ReorderInput`` / ``ReorderOutput`` of its blocked NCHWc layout, this project's ``SS2DScan``):
summed by type they say which kernels a network spends its time in.
"""
import collections
import json
import os
import statistics
import tempfile
from typing import List, Optional

import torch

from .executorch_profile import OperatorTime

__all__ = ['profile_onnxruntime']


def profile_onnxruntime(onnx_file: str, inputs: torch.Tensor, runs: int = 5,
                        threads: Optional[int] = 1) -> List[OperatorTime]:
    """Run ``onnx_file`` ``runs`` times with onnxruntime's profiler and sum each operator type's
    median node time per run.

    Args:
        onnx_file (str): an ONNX file with one input (e.g. written by ``export_onnx.py``; the
            scan kernel's library is registered for a file that calls it).
        inputs (Tensor): its input, shaped as exported.
        runs (int): profiled runs (after one untimed run). Default: 5.
        threads (int, optional): intra-op threads (None: onnxruntime's default). Default: 1.

    Returns:
        list[OperatorTime]: by type, longest first; the median whole run is the kind
        ``'total'`` (first).
    """
    import onnxruntime

    from mmmobilemamba.deploy.scan_kernel import register_scan_kernel_if_called

    if runs < 1:
        raise ValueError(f'runs must be at least 1, got {runs}')
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    register_scan_kernel_if_called(options, str(onnx_file))
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, 'profile')
        session = onnxruntime.InferenceSession(str(onnx_file), options,
                                               providers=['CPUExecutionProvider'])
        feed = {session.get_inputs()[0].name: inputs.float().cpu().numpy()}
        for _ in range(runs + 1):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    # per run: the whole run, and each node's kernel time (a node's name is unique in a run)
    run_times = [e['dur'] / 1e3 for e in events if e.get('name') == 'model_run'][1:]
    node_times, kinds = collections.defaultdict(list), {}
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
            node_times[event['name']].append(event['dur'] / 1e3)
            kinds[event['name']] = event['args']['op_name']
    times, counts = collections.Counter(), collections.Counter()
    for node, durations in node_times.items():
        times[kinds[node]] += statistics.median(durations[1:] or durations)
        counts[kinds[node]] += 1
    return [OperatorTime('total', statistics.median(run_times), 1)] + [
        OperatorTime(kind, ms, counts[kind]) for kind, ms in times.most_common()]
