"""Training safety and launching: safe resume, atomic checkpoints, loss guard, image loading,
dataset checks and the train/test entry points behind ``tools/``.

Importing this package registers everything with mmengine (``HOOKS``, ``TRANSFORMS``,
``METRICS``, the ``'atomic_local'`` file backend) and allow-lists the classes mmengine
checkpoints contain for ``torch.load(weights_only=True)``.
"""
from .atomic_io import (AtomicLocalBackend, atomic_write_bytes, atomic_write_text,
                        register_atomic_backend, remove_stale_temp_files)
from .checkpoint_safety import checkpoint_safe_globals, register_checkpoint_safe_globals
from .hooks import (AtomicCheckpointHook, FiniteLossGuardHook, NonFiniteLossError,
                    non_finite_losses)
from .image_loading import (ImageLoadError, SafeLoadImageFromFile, decode_image, load_image,
                            to_three_channel_uint8)

register_checkpoint_safe_globals()
register_atomic_backend()

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'FiniteLossGuardHook', 'ImageLoadError',
    'NonFiniteLossError', 'SafeLoadImageFromFile', 'atomic_write_bytes', 'atomic_write_text',
    'checkpoint_safe_globals', 'decode_image', 'load_image', 'non_finite_losses',
    'register_atomic_backend', 'register_checkpoint_safe_globals', 'remove_stale_temp_files',
    'to_three_channel_uint8'
]
