"""Profile an ONNX file in onnxruntime (CPU): node time per operator type, from its profiler.

    python tools/analysis/profile_onnxruntime.py b1.onnx [--runs 5] [--threads 1] [--top 15]
    python tools/analysis/profile_onnxruntime.py other.onnx --shape 512 512

The input is random, shaped as the file's record (``b1.json``, written by
``tools/deployment/export_onnx.py``) says, or ``(1, 3, H, W)`` by ``--shape`` for a file
without one; the timings are onnxruntime's own node events (median per run over ``--runs``
runs), summed by the operator types of the graph onnxruntime optimised.
"""
import sys
from typing import Optional, Sequence

from mmmobilemamba.analysis.profile_tool import profile_tool


def main(argv: Optional[Sequence[str]] = None) -> int:
    return profile_tool('onnxruntime', __doc__.splitlines()[0], argv)


if __name__ == '__main__':
    sys.exit(main())
