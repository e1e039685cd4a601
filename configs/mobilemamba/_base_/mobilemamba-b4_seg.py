# MobileMamba-B4 as the authors' segmentors use it (Semantic FPN, DeepLabv3, PSPNet): the
# ImageNet-1k B4 weights (B4 is B1's architecture trained at 512 px), BatchNorm trained
# (norm_eval=False, per-GPU statistics: plain BN, 8 images per GPU), drop path 0.03. A model
# file uses it as
#   model = dict(backbone={{_base_.mobilemamba_b4}})
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

# The authors' ImageNet-1k B4 checkpoint, read as it is, where unpacking their weights archive
# at the repository root puts it (docs/model_zoo.md). A missing file stops training with
# where to get it; `init_cfg=None` trains the backbone from scratch. In a config inheriting a
# model file, set model = dict(backbone=dict(init_cfg=dict(checkpoint=PATH))).
pretrained = 'weights/MobileMamba_B4/mobilemamba_b4.pth'

# _delete_: replaces the ResNet-50 of mmseg's model bases entirely.
mobilemamba_b4 = dict(
    _delete_=True,
    type='MobileMamba',
    arch='b4',
    out_indices=(0, 1, 2),  # strides 16, 32, 64; channels 200, 376, 448
    frozen_stages=-1,
    norm_eval=False,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained))
