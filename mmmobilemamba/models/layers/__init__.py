"""Building blocks of MobileMamba, usable on their own."""
from .conv_bn import ConvBN, ResidualDWConv, ResidualFFN, fuse_conv_bn
from .ss2d import SS2D
from .wte_mamba import WTEMamba

__all__ = ['ConvBN', 'ResidualDWConv', 'ResidualFFN', 'fuse_conv_bn', 'SS2D', 'WTEMamba']
