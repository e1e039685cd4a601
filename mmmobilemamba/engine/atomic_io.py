"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

The bytes go to a temporary file in the destination's directory (same filesystem, so the final
rename is atomic), are flushed and fsynced, then ``os.replace`` swaps them in and the directory is
fsynced so the rename itself survives a power cut. A process killed at any point leaves at most a
stray ``.<name>.*.tmp`` file, which :func:`remove_stale_temp_files` cleans up.
"""
import glob
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

TEMP_SUFFIX = '.tmp'
ATOMIC_BACKEND = 'atomic_local'
PathLike = Union[str, Path]


def _temp_prefix(path: str) -> str:
    return f'.{osp.basename(path)}.'


def _fsync_dir(directory: str) -> None:
    # Persist the rename; not every platform/filesystem allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating missing parent directories).

    Args:
        path: Destination file.
        data: The complete new content.
    """
    path = osp.abspath(str(path))
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave our half-written temp file behind.
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_dir(directory)


def atomic_write_text(path: PathLike, text: str, encoding: str = 'utf-8') -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def remove_stale_temp_files(path: PathLike, targets: str = '*') -> List[str]:
    """Delete temporary files a killed :func:`atomic_write_bytes` left behind.

    Only safe when no other process is writing the same files at the same time.

    Args:
        path: A destination file passed to :func:`atomic_write_bytes` (it need not exist), or a
            directory: then the temp files of its files whose names match ``targets`` go.
        targets: Glob of destination file names, used when ``path`` is a directory.

    Returns:
        The removed paths.
    """
    path = str(path)
    if osp.isdir(path):
        directory, prefix = path, f'.{targets}.'
    else:
        directory, prefix = osp.dirname(path) or '.', glob.escape(_temp_prefix(path))
    removed = []
    for stale in sorted(glob.glob(osp.join(glob.escape(directory), f'{prefix}*{TEMP_SUFFIX}'))):
        if osp.isfile(stale):
            os.remove(stale)
            removed.append(stale)
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put``/``put_text`` write atomically.

    Registered with mmengine's file I/O as ``'atomic_local'``, so
    ``backend_args=dict(backend='atomic_local')`` makes ``mmengine.runner.save_checkpoint`` (and
    anything else writing through ``mmengine.fileio``) atomic.
    """

    def put(self, obj: bytes, filepath: PathLike) -> None:
        """Write bytes to ``filepath`` atomically."""
        atomic_write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath: PathLike, encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically."""
        atomic_write_text(filepath, obj, encoding=encoding)


def register_atomic_backend() -> None:
    """Register :class:`AtomicLocalBackend` as mmengine file backend ``'atomic_local'``.

    Idempotent. No URI prefix is claimed: plain local paths keep mmengine's own backend unless
    ``backend='atomic_local'`` is asked for.
    """
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
