"""Building blocks of MobileMamba, usable on their own."""
from .conv_bn import ConvBN, ResidualDWConv, ResidualFFN, fuse_activation, fuse_conv_bn
from .inference_conv import InferenceConv2d
from .ss2d import SS2D
from .wte_mamba import WTEMamba

__all__ = ['ConvBN', 'ResidualDWConv', 'ResidualFFN', 'fuse_conv_bn', 'fuse_activation',
           'InferenceConv2d', 'SS2D', 'WTEMamba']
