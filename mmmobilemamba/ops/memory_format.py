"""Which memory format a feature map is in, for code that follows it."""
import torch

__all__ = ['channels_innermost', 'memory_format_of']


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether the channels of a 4-D map are innermost in memory: an NHWC (channels-last) map,
    or a channel slice of one, which is not itself contiguous in any format."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when :func:`channels_innermost`, else ``torch.contiguous_format``."""
    return torch.channels_last if channels_innermost(x) else torch.contiguous_format
