# Mask R-CNN with a MobileMamba-B1 backbone on COCO 2017, 1x schedule (12 epochs): the paper's
# instance-segmentation setting. 16 images per step in total (8 GPUs x 2 images), AdamW lr 2e-4,
# weight decay 0.05, gradient clipping (max norm 0.1), 500 iterations of linear warm-up then
# cosine annealing over the 12 epochs, frozen BatchNorm statistics in the backbone.
#
# Parameters: 37.9M (paper: 38.0M), counted with 80 classes.
#
#   8 GPUs: bash tools/dist_train.sh configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py 8
#   other:  python tools/train.py configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py
#           --auto-scale-lr   (scales lr by total batch size / 16)
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

# ImageNet-1k MobileMamba-B1 weights. Download the released classification checkpoint
# (mobilemamba_b1.pth, from the authors' "MobileMamba" GitHub release page) and either point
# this variable at it directly or convert it once to our key layout:
#   python tools/model_converters/mobilemamba_official.py SRC.pth checkpoints/mobilemamba_b1.pth
# A missing file stops training with these instructions; `pretrained = None` here trains the
# backbone from scratch (with a warning; the paper's numbers need the ImageNet weights). In a
# config inheriting this one, set model = dict(backbone=dict(init_cfg=...)) instead: the
# model dict below is built with this file's value.
pretrained = 'checkpoints/mobilemamba_b1.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileMamba',
        arch='b1',
        out_indices=(0, 1, 2),  # strides 16, 32, 64; channels 200, 376, 448
        frozen_stages=-1,
        norm_eval=True,
        with_cp=False,
        drop_path_rate=None,  # the release's 0.03
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # Two transposed-conv levels below stride 16: outputs at strides 4, 8, 16, 32, 64, as the
    # base's RPN anchors (strides [4, 8, 16, 32, 64]) and RoI extractors (featmap_strides
    # [4, 8, 16, 32]) expect.
    neck=dict(
        _delete_=True,
        type='MobileMambaFPN',
        in_channels=[200, 376, 448],
        out_channels=256,
        num_deconv_levels=2,
        num_outs=5))

# 2 images per GPU x 8 GPUs = 16 per step (the 1333x800 pipelines of the dataset base).
train_dataloader = dict(batch_size=2, num_workers=2)

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2))

# lr 2e-4 is for 16 images per step; `--auto-scale-lr` rescales it for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)
