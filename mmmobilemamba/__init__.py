"""MobileMamba for OpenMMLab dense prediction."""
from .version import __version__

__all__ = ['__version__']
