"""MobileMamba for OpenMMLab dense prediction.

Importing the package (configs do it with ``custom_imports``) registers the backbone and neck
with mmdet and mmseg, and the hooks, transforms and metrics with mmengine's root registries.
"""
from . import engine, models  # noqa: F401  (registration side effects)
from .models import MobileMamba, convert_official_checkpoint, convert_official_model
from .version import __version__

__all__ = ['__version__', 'MobileMamba', 'convert_official_checkpoint', 'convert_official_model']
