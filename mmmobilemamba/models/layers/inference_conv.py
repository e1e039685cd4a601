"""A Conv2d for deployed models: weights packed once for oneDNN on CPU, activation fused.

``nn.Conv2d`` on CPU hands its weights to oneDNN in PyTorch's layout, and oneDNN reorders them
into its blocked layout on every call: for a backbone of 16M parameters at batch size 1 that is
a fixed cost of several milliseconds per image, whatever the image size. :class:`InferenceConv2d`
keeps the reordered weights (recomputed when the weights or the input shape change) and calls
oneDNN's convolution with the activation fused into it. 1x1 convs where a oneDNN call costs
more than the arithmetic run as the plain ops instead: a per-channel multiply-add (depthwise)
or one BLAS matrix product (dense, small maps). This fast path is taken only where it computes
the same thing: float32 channels-last CPU inputs, no autograd, oneDNN available. Everywhere
else (CUDA, training, NCHW inputs) it is a plain ``Conv2d`` followed by the activation.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmobilemamba.ops import channels_innermost

__all__ = ['InferenceConv2d', 'apply_activation']

# dense 1x1 convs on fewer pixels (batch x height x width) run as one BLAS matrix product,
# faster than oneDNN there on CPU (measured: docs/benchmarks.md)
_MATMUL_MAX_ROWS = 512

# activation name -> (oneDNN post-op name, eager in-place twin)
_ACTIVATIONS = {
    None: ('none', None),
    'relu': ('relu', torch.relu_),
    'silu': ('swish', lambda x: F.silu(x, inplace=not torch.is_grad_enabled())),
}


def apply_activation(x: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    """``x`` through an :class:`InferenceConv2d` activation ('relu', 'silu' or None) as its
    unfused path applies it (in place where no gradient is taken)."""
    eager = _ACTIVATIONS[activation][1]
    return x if eager is None else eager(x)


def _is_compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and hasattr(compiler, 'is_compiling')
                and compiler.is_compiling())


def _onednn_available() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


class InferenceConv2d(nn.Conv2d):
    """``act(conv2d(x))`` with oneDNN-packed weights on CPU; a ``Conv2d`` (same parameters,
    same state dict keys) everywhere else.

    Args:
        *args: as ``nn.Conv2d``.
        activation (str, optional): ``'relu'``, ``'silu'`` or None, applied after the conv.
        **kwargs: as ``nn.Conv2d``.
    """

    def __init__(self, *args, activation: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if activation not in _ACTIVATIONS:
            raise ValueError(f'InferenceConv2d: activation must be one of '
                             f'{[a for a in _ACTIVATIONS if a]} or None, got {activation!r}')
        self.activation = activation
        self._packed = None
        self._packed_key = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: Optional[str] = None) -> 'InferenceConv2d':
        """The same convolution (sharing its parameters), with ``activation`` fused."""
        if isinstance(conv, InferenceConv2d):
            if conv.activation is not None and activation is not None:
                raise ValueError('InferenceConv2d.from_conv: the conv already has an activation')
            conv.activation = conv.activation or activation
            return conv
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, activation=activation, device='meta')
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f', activation={self.activation}'

    def _can_pack(self, x: torch.Tensor) -> bool:
        return (x.device.type == 'cpu' and x.dim() == 4 and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and self.padding_mode == 'zeros'
                and not isinstance(self.padding, str)
                and channels_innermost(x)  # NHWC, or a channel slice of it
                and not (torch.is_grad_enabled()
                         and (x.requires_grad or self.weight.requires_grad))
                and not torch.jit.is_tracing()  # FLOP counters and compilers see a conv
                and not _is_compiling()
                and _onednn_available())

    def _prepared_weight(self, layout: tuple) -> torch.Tensor:
        """The weight in ``layout`` (``('onednn', input_shape)`` or ``('matmul',)``), kept
        until the weight or the layout changes."""
        weight = self.weight
        # a model built under torch.inference_mode has inference tensors: no version counter
        # (and they cannot change outside inference mode)
        version = None if weight.is_inference() else weight._version
        key = (weight.data_ptr(), version, layout)
        if self._packed is None or self._packed_key != key:
            with torch.no_grad():
                if layout[0] == 'matmul':  # (C_in, C_out): what BLAS reads fastest here
                    self._packed = weight.detach().flatten(1).t().contiguous()
                else:
                    # oneDNN picks the weight layout for the problem size: packed for another
                    # input shape, the weights would be reordered again on every call (slowly)
                    self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                        weight.detach().contiguous().to_mkldnn(), list(self.padding),
                        list(self.stride), list(self.dilation), self.groups, list(layout[1]))
            self._packed_key = key
        return self._packed

    def _elementwise_form(self, x: torch.Tensor) -> Optional[str]:
        """How a 1x1 conv runs on CPU without oneDNN: 'scale' for a depthwise one (a
        per-channel multiply-add), 'matmul' for a dense one on fewer than
        ``_MATMUL_MAX_ROWS`` pixels (one BLAS product); None: oneDNN. A oneDNN call costs
        ~50 us on CPU whatever its size, and BLAS is faster on small maps."""
        if self.kernel_size != (1, 1) or self.stride != (1, 1) or self.padding != (0, 0):
            return None
        if self.groups == self.in_channels == self.out_channels:
            return 'scale'
        if self.groups == 1 and x.numel() // self.in_channels < _MATMUL_MAX_ROWS:
            return 'matmul'
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post_op = _ACTIVATIONS[self.activation][0]
        if not self._can_pack(x):
            out = super().forward(x)
        else:
            form = self._elementwise_form(x)
            if form is None:
                x = x.contiguous(memory_format=torch.channels_last)  # a slice: copy, as conv2d
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self._prepared_weight(('onednn', tuple(x.shape))), self.bias,
                    list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    post_op, [], '')
            if form == 'scale':
                scale = self.weight.view(1, -1, 1, 1)
                out = x * scale if self.bias is None else \
                    torch.addcmul(self.bias.view(1, -1, 1, 1), x, scale)
            else:  # pixels as rows: NHWC memory is already that matrix (a slice: copied)
                b, _, h, w = x.shape
                rows = x.permute(0, 2, 3, 1).reshape(-1, self.in_channels)
                weight = self._prepared_weight(('matmul',))
                out = rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)
                out = out.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)
        return apply_activation(out, self.activation)

    def __getstate__(self):
        state = super().__getstate__()
        state['_packed'] = state['_packed_key'] = None  # oneDNN tensors do not pickle
        return state

    def _apply(self, fn, recurse=True):
        self._packed = None  # .to()/.float()/... make new weights: pack again
        return super()._apply(fn, recurse)
