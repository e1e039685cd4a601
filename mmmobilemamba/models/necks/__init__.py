"""Necks: feature pyramids over MobileMamba's stride-16/32/64 stages."""
from .mobilemamba_fpn import MobileMambaFPN

__all__ = ['MobileMambaFPN']
