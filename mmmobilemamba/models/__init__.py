"""Backbones, necks and layers; importing registers them with mmdet and mmseg."""
from .backbones import ARCH_SETTINGS, MobileMamba
from .checkpoint import (convert_official_checkpoint, convert_official_model,
                         load_backbone_checkpoint)
from .necks import *  # noqa: F401,F403

try:  # heads need mmdet
    from .heads import SSDLiteHead  # noqa: F401
except ImportError:
    pass

__all__ = ['MobileMamba', 'ARCH_SETTINGS', 'convert_official_checkpoint',
           'convert_official_model', 'load_backbone_checkpoint', 'MobileMambaFPN']
