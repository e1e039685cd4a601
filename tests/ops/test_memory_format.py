"""The memory-format predicate that the wavelets, SS2D and the inference conv follow."""
import torch

from mmmobilemamba.ops import channels_innermost, memory_format_of


def test_nhwc_maps_and_their_channel_slices_have_channels_innermost():
    nhwc = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    assert channels_innermost(nhwc) and channels_innermost(nhwc[:, 2:6])
    assert memory_format_of(nhwc[:, 2:6]) == torch.channels_last


def test_nchw_maps_single_channels_and_other_ranks_do_not():
    nchw = torch.randn(2, 8, 5, 7)
    assert not channels_innermost(nchw) and not channels_innermost(nchw[:, 2:6])
    assert memory_format_of(nchw) == torch.contiguous_format
    # one channel: NCHW and NHWC are the same memory, call it contiguous
    assert not channels_innermost(torch.randn(1, 1, 4, 4).contiguous(
        memory_format=torch.channels_last))
    assert not channels_innermost(torch.randn(4, 8))
