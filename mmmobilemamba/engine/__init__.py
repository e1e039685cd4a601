"""Training safety and launching: safe resume, atomic checkpoints, loss guard, image loading,
dataset and model checks before a run, and the train/test entry points behind ``tools/``.

Importing this package registers everything with mmengine's root registries, which mmdet's and
mmseg's inherit (``HOOKS``: AtomicCheckpointHook, FiniteLossGuardHook; ``TRANSFORMS``:
SafeLoadImageFromFile; ``METRICS``: DumpSegResults), makes ``LoadImageFromFile`` in mmdet's and
mmseg's pipelines name :class:`CheckedLoadImageFromFile`, registers the ``'atomic_local'`` file
backend, and allow-lists the classes mmengine checkpoints contain for
``torch.load(weights_only=True)``.
"""
from .atomic_io import (AtomicLocalBackend, atomic_write_bytes, atomic_write_text,
                        register_atomic_backend, remove_stale_temp_files)
from .checkpoint_safety import checkpoint_safe_globals, register_checkpoint_safe_globals
from .config import (ConfigError, detect_codebase, get_registry, iter_dataset_cfgs,
                     load_config)
from .config_rewrites import (apply_safe_image_loading, apply_safety_hooks,
                              skip_backbone_pretrained)
from .dataset_check import (Problem, check_class_counts, check_dataset_config,
                            check_dataset_paths, format_report, has_errors)
from .hooks import (AtomicCheckpointHook, FiniteLossGuardHook, NonFiniteLossError,
                    non_finite_losses)
from .image_loading import (CheckedLoadImageFromFile, ImageLoadError, SafeLoadImageFromFile,
                            decode_image, load_image, register_checked_loader,
                            to_three_channel_uint8)
from .launch import find_resume_checkpoint, test_main, train_main
from .metrics import DumpSegResults
from .model_check import (backbone_out_channels, check_model_channels, check_model_config,
                          load_from_report)
from .preflight import check_checkpoint_files, preflight_problems

register_checkpoint_safe_globals()
register_atomic_backend()
register_checked_loader()

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CheckedLoadImageFromFile', 'ConfigError',
    'DumpSegResults', 'FiniteLossGuardHook', 'ImageLoadError', 'NonFiniteLossError', 'Problem',
    'SafeLoadImageFromFile', 'apply_safe_image_loading', 'apply_safety_hooks',
    'atomic_write_bytes', 'atomic_write_text', 'backbone_out_channels', 'check_checkpoint_files',
    'check_class_counts', 'check_dataset_config', 'check_dataset_paths', 'check_model_channels',
    'check_model_config', 'checkpoint_safe_globals', 'decode_image', 'detect_codebase',
    'find_resume_checkpoint', 'format_report', 'get_registry', 'has_errors', 'iter_dataset_cfgs',
    'load_config', 'load_from_report', 'load_image', 'non_finite_losses', 'preflight_problems',
    'register_atomic_backend', 'register_checked_loader', 'register_checkpoint_safe_globals',
    'remove_stale_temp_files', 'skip_backbone_pretrained', 'test_main', 'to_three_channel_uint8',
    'train_main'
]
