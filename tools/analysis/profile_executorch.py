"""Profile an ExecuTorch program: XNNPACK's time per operator kind, in ExecuTorch's runtime.

    python tools/analysis/profile_executorch.py b1.pte [--runs 5] [--threads 1] [--top 15]
    python tools/analysis/profile_executorch.py other.pte --shape 512 512

The input is random, shaped as the file's record (``b1.json``, written by
``tools/deployment/export_executorch.py``) says, or ``(1, 3, H, W)`` by ``--shape`` for a file
without one; the timings are XNNPACK's own events (median per run over ``--runs`` runs),
summed by operator kind.
"""
import sys
from typing import Optional, Sequence

from mmmobilemamba.analysis.profile_tool import profile_tool


def main(argv: Optional[Sequence[str]] = None) -> int:
    return profile_tool('executorch', __doc__.splitlines()[0], argv)


if __name__ == '__main__':
    sys.exit(main())
