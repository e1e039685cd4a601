"""Heads: fixes of OpenMMLab heads that our configs need."""
from .ssd_head import SSDLiteHead

__all__ = ['SSDLiteHead']
