"""Folding a whole detector/segmentor for inference: what the benchmarks time and the exports
write."""
from typing import List

import torch.nn as nn

__all__ = ['fuse_for_inference']


def fuse_for_inference(model: nn.Module) -> List[str]:
    """Fold what can be folded for inference, in place; return what was done.

    Modules with a ``switch_to_deploy`` method (MobileMamba and its re-parameterisable
    blocks) are switched, outermost first: a MobileMamba given alone is switched as a whole,
    as within a detector; then remaining conv + BN pairs are fused by mmcv.

    Args:
        model (nn.Module): a model in eval mode.

    Returns:
        list[str]: names of the switched modules ('<root>' for ``model`` itself), then
        'fuse_conv_bn'.
    """
    from mmcv.cnn import fuse_conv_bn

    done: List[str] = []
    if callable(getattr(model, 'switch_to_deploy', None)):
        model.switch_to_deploy()
        done.append('<root>')
    else:
        for name, module in model.named_modules():
            if any(name.startswith(prefix + '.') for prefix in done):
                continue  # its parent's switch_to_deploy already took care of it
            if name and callable(getattr(module, 'switch_to_deploy', None)):
                module.switch_to_deploy()
                done.append(name)
    fuse_conv_bn(model)
    return done + ['fuse_conv_bn']
