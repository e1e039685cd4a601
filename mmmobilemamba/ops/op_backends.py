"""How the custom ops of :mod:`.scan_ops` and :mod:`.fused_ops` pick an implementation:
'triton' (a kernel module, imported when first called, never at import) or 'torch' (the
PyTorch twin)."""
import importlib
from types import ModuleType
from typing import Optional

__all__ = ['OP_BACKENDS', 'triton_kernels']

OP_BACKENDS = ('torch', 'triton')


def triton_kernels(backend: str, module: str) -> Optional[ModuleType]:
    """The kernel module ``mmmobilemamba.ops.<module>`` for ``backend`` 'triton', None for
    'torch' (the caller runs its twin).

    Raises:
        ValueError: an unknown backend.
        ImportError: 'triton' without a working Triton.
    """
    if backend not in OP_BACKENDS:
        raise ValueError(f'custom op: backend must be one of {OP_BACKENDS}, got {backend!r}')
    if backend == 'torch':
        return None
    try:
        return importlib.import_module(f'mmmobilemamba.ops.{module}')
    except Exception as err:  # ImportError, or a Triton that does not work with this torch
        raise ImportError("backend 'triton' needs Triton (pip install triton; it comes with "
                          "torch's CUDA builds); use backend 'torch' instead") from err
