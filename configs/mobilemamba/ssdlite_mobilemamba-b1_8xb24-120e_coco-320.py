# SSDLite with a MobileMamba-B1 backbone on COCO 2017 at 320x320: the paper's light-weight
# detection setting. 8 GPUs x 24 images, 120 epochs.
#
# Built on mmdet's MobileNetV2 SSDLite recipe (ssdlite_mobilenetv2-scratch_8xb24-600e_coco);
# changed: backbone, neck/head channels and the schedule length. That recipe runs 120 epochs
# over COCO repeated 5 times (600 passes, hence "600e"); here the dataset is not repeated, so
# this is 120 passes over COCO, as the name says. Optimiser: we found no SSDLite optimiser
# settings for MobileMamba in the paper, so this keeps the mmdet SSDLite recipe: SGD lr 0.015
# (for 8 x 24 = 192 images per step), momentum 0.9, weight decay 4e-5, 500 iterations of
# linear warm-up, cosine annealing to 0 over the 120 epochs.
#
# Parameters: 18.0M with 80 classes (paper: 18.0M), including the backbone's third stage, which
# SSDLite does not read.
#
#   8 GPUs: bash tools/dist_train.sh configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py 8
_base_ = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'
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
        out_indices=(0, 1),  # strides 16 and 32; channels 200 and 376
        frozen_stages=-1,
        # 24 images per GPU give usable batch statistics: BatchNorm keeps training, as in the
        # mmdet SSDLite recipe (the R-CNN-style 2-image configs freeze it instead).
        norm_eval=False,
        with_cp=False,
        drop_path_rate=None,  # the release's 0.03
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # Depthwise extra levels on the stride-32 map: strides 16, 32, 64, 128, 256, 512 (maps of
    # 20, 10, 5, 3, 2, 1 cells at 320 px).
    neck=dict(
        in_channels=(200, 376),
        out_channels=(200, 376, 512, 256, 256, 128),
        level_strides=(2, 2, 2, 2),
        level_paddings=(1, 1, 1, 1),
        l2_norm_scale=None,
        use_depthwise=True),
    # Anchors as the MobileNetV2 SSDLite at 320 px (strides [16, 32, 64, 107, 160, 320],
    # centres matching the 20/10/5/3/2/1-cell maps).
    # SSDLiteHead: mmdet's SSDHead, made predictable under mmdet 3.3 (see its docstring)
    bbox_head=dict(type='SSDLiteHead', in_channels=(200, 376, 512, 256, 256, 128),
                   use_depthwise=True))

# 120 passes over COCO (the base repeats it 5 times per epoch).
train_dataloader = dict(batch_size=24, dataset=dict(times=1))

max_epochs = 120
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', begin=0, T_max=max_epochs, end=max_epochs, by_epoch=True,
         eta_min=0)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.015, momentum=0.9, weight_decay=4.0e-5))

# The backbone still holds (and runs) its third stage, which SSDLite does not use (its
# parameters are counted in the 18.0M, as in the paper): DDP must allow parameters without
# gradients.
find_unused_parameters = True

# lr 0.015 is for 8 x 24 = 192 images per step; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=192)
