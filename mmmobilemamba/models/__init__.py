"""Backbones, necks and layers; importing registers them with mmdet and mmseg."""
from .backbones import ARCH_SETTINGS, MobileMamba
from .checkpoint import convert_official_checkpoint, load_backbone_checkpoint

__all__ = ['MobileMamba', 'ARCH_SETTINGS', 'convert_official_checkpoint',
           'load_backbone_checkpoint']
