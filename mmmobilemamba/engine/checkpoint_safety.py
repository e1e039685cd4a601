"""Allow-list what mmengine checkpoints pickle so ``torch.load(weights_only=True)`` opens them.

torch >= 2.6 unpickles checkpoints with ``weights_only=True`` by default, which refuses every
global that is not allow-listed. A checkpoint written by mmengine 0.10 (``Runner.save_checkpoint``)
holds a few objects besides tensors:

* the message hub's ``HistoryBuffer`` objects (log history, needed to resume);
* numpy arrays, dtypes and scalars inside those buffers and in the runtime info;
* ``builtins.getattr``: ``HistoryBuffer`` pickles its statistic methods (``HistoryBuffer.min``...)
  by reference, which pickle encodes as ``getattr(HistoryBuffer, 'min')``.

We allow exactly these and nothing else. ``getattr`` is the dangerous one (``getattr`` of an
arbitrary object reaches arbitrary code), so it is never allow-listed itself: the name
``builtins.getattr`` is bound to :func:`restricted_getattr`, which only returns the statistic
methods of ``HistoryBuffer`` and refuses everything else. ``weights_only=False`` is never used:
a checkpoint downloaded from the internet must never run code.
"""
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The statistic methods HistoryBuffer registers by default (see ``HistoryBuffer.__init__``).
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')

# numpy moved ``numpy.core`` to ``numpy._core`` in 2.0; pickles name the module they were saved
# with, so checkpoints written under numpy 1.x say ``numpy.core.multiarray.*``.
_NUMPY_MULTIARRAY_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray')
_NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                 np.uint64, np.float16, np.float32, np.float64)

SafeGlobal = Union[Callable, Tuple[Callable, str]]
_registered = False


def restricted_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling: only ``HistoryBuffer.<statistic>``.

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise torch.serialization.pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only '
        f'HistoryBuffer.{{{",".join(HISTORY_BUFFER_METHODS)}}} are allowed')


def _numpy_multiarray(name: str) -> Callable:
    core = getattr(np, '_core', None) or np.core
    return getattr(core.multiarray, name)


def checkpoint_safe_globals() -> List[SafeGlobal]:
    """Everything mmengine checkpoints need beyond torch's default allow-list.

    Returns:
        Entries for :func:`torch.serialization.add_safe_globals`: objects, or
        ``(object, 'module.name')`` pairs where the pickled name differs from the object's own.
    """
    entries: List[SafeGlobal] = [HistoryBuffer, np.ndarray, np.dtype,
                                 (restricted_getattr, 'builtins.getattr')]
    # BUILD of a dtype checks its concrete class (numpy.dtypes.Float64DType...), not np.dtype.
    entries += sorted({type(np.dtype(t)) for t in _NUMPY_DTYPES}, key=lambda c: c.__name__)
    for module in _NUMPY_MULTIARRAY_MODULES:
        for name in ('_reconstruct', 'scalar'):
            entries.append((_numpy_multiarray(name), f'{module}.{name}'))
    return entries


def register_checkpoint_safe_globals() -> None:
    """Allow-list :func:`checkpoint_safe_globals` with torch (idempotent, process-wide).

    Called when :mod:`mmmobilemamba.engine` is imported, so ``--resume`` and ``load_from`` work
    with ``weights_only=True``.
    """
    global _registered
    if _registered:
        return
    torch.serialization.add_safe_globals(checkpoint_safe_globals())
    _registered = True
