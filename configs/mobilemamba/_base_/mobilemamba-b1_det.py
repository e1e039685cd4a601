# MobileMamba-B1 as the authors' detectors use it (RetinaNet, Mask R-CNN, SSDLite): ImageNet-1k
# B1 weights, BatchNorm statistics frozen (norm_eval), nothing frozen, drop path 0.03 (the
# release's rate for B1: drop_path_rate=None). A model file uses it as
#   model = dict(backbone={{_base_.mobilemamba_b1}})
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

# The authors' ImageNet-1k B1 checkpoint, read as it is, where unpacking their weights archive
# at the repository root puts it (docs/model_zoo.md). A missing file stops training with
# where to get it; `init_cfg=None` trains the backbone from scratch. In a config inheriting a model file, set
# model = dict(backbone=dict(init_cfg=dict(checkpoint=PATH))): a `pretrained = ...` there does
# not reach the model dict built here (train.py says so).
pretrained = 'weights/MobileMamba_B1/mobilemamba_b1.pth'

# _delete_: replaces the ResNet-50 of mmdet's model bases entirely.
mobilemamba_b1 = dict(
    _delete_=True,
    type='MobileMamba',
    arch='b1',
    out_indices=(0, 1, 2),  # strides 16, 32, 64; channels 200, 376, 448
    frozen_stages=-1,
    norm_eval=True,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained))

# SSDLite reads stages 0 and 1 (strides 16, 32) only. Stage 2 is then not built: the authors'
# backbone computed it and threw it away, which left its parameters without gradients (DDP
# rejects that) and cost compute; their released SSDLite files' stage-2 weights are skipped
# when loading (with a log line). Deviation from the authors, same outputs.
mobilemamba_b1_ssdlite = dict(mobilemamba_b1, out_indices=(0, 1))
