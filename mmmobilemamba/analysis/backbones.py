"""The backbones the benchmark tools compare: MobileMamba and mmdet's backbones of similar cost.

RegNetX-800MF has MobileMamba-B1's FLOPs and is the reference of every ratio; ResNet-18/50 and
MobileNetV2 are the usual baselines. Models are built on the CPU in eval mode; the tools copy
and move them.
"""
from typing import Dict, Tuple

import torch.nn as nn

__all__ = ['REFERENCE', 'REFERENCE_BACKBONES', 'MOBILEMAMBA_ARCHS', 'backbone_label',
           'build_backbone']

REFERENCE = 'RegNetX-800MF'

# key -> (label, mmdet config)
REFERENCE_BACKBONES: Dict[str, Tuple[str, dict]] = {
    'regnetx_800mf': (REFERENCE,
                      dict(type='RegNet', arch='regnetx_800mf', out_indices=(0, 1, 2, 3))),
    'resnet18': ('ResNet-18', dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3))),
    'resnet50': ('ResNet-50', dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3))),
    'mobilenetv2': ('MobileNetV2', dict(type='MobileNetV2', out_indices=(2, 4, 6))),
}

MOBILEMAMBA_ARCHS = ('t2', 't4', 's6', 'b1', 'b2', 'b4')


def backbone_label(key: str) -> str:
    """The table name of a backbone key: 'b1' -> 'MobileMamba-B1', 'resnet50' -> 'ResNet-50'.

    Raises:
        KeyError: for a key that is neither a MobileMamba arch nor a reference backbone.
    """
    key = key.lower()
    if key in REFERENCE_BACKBONES:
        return REFERENCE_BACKBONES[key][0]
    if key in MOBILEMAMBA_ARCHS:
        return f'MobileMamba-{key.upper()}'
    raise KeyError(f'unknown backbone {key!r}: choose a MobileMamba arch {MOBILEMAMBA_ARCHS} '
                   f'or a reference {tuple(REFERENCE_BACKBONES)}')


def build_backbone(key: str, **mobilemamba_kwargs) -> nn.Module:
    """A freshly built backbone (random weights) on the CPU, in eval mode.

    MobileMamba is built with ``norm_eval=True`` (frozen BatchNorm statistics in training), the
    default of mmdet's backbones and what the detection configs set, so that training steps
    compare like with like.

    Args:
        key (str): a MobileMamba arch ('b1', 't2', ...) or a key of
            :data:`REFERENCE_BACKBONES`.
        **mobilemamba_kwargs: further MobileMamba arguments (e.g. ``channels_last``); ignored
            for the references.
    """
    import mmmobilemamba  # noqa: F401  registers MobileMamba in mmdet's MODELS
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    backbone_label(key)  # a clear error for an unknown key
    key = key.lower()
    cfg = REFERENCE_BACKBONES[key][1] if key in REFERENCE_BACKBONES else dict(
        type='MobileMamba', arch=key, norm_eval=True, **mobilemamba_kwargs)
    model = MODELS.build(cfg)
    model.eval()  # mmdet's train() returns None: do not chain
    return model
