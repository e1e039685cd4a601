# SSDLite with a MobileMamba-B1 backbone on COCO 2017 at 512x512: as the 320 px config (same
# model, optimiser and 120-epoch schedule), with 512 px inputs and anchors for the larger maps.
#
# At 512 px the feature maps have 32, 16, 8, 4, 2, 1 cells, so the anchor strides are
# [16, 32, 64, 128, 256, 512] (each map tiles the image exactly), and the anchor sizes are the
# 320 px ones scaled by 512 / 320.
#
# Parameters: 18.0M with 80 classes (paper: 18.0M).
#
#   8 GPUs: bash tools/dist_train.sh configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-512.py 8
_base_ = './ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py'

model = dict(
    bbox_head=dict(
        anchor_generator=dict(
            strides=[16, 32, 64, 128, 256, 512],
            min_sizes=[77, 160, 240, 323, 405, 486],
            max_sizes=[160, 240, 323, 405, 486, 512])))

input_size = 512
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='Expand',
        mean={{_base_.data_preprocessor.mean}},
        to_rgb={{_base_.data_preprocessor.bgr_to_rgb}},
        ratio_range=(1, 4)),
    dict(type='MinIoURandomCrop', min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='PhotoMetricDistortion',
        brightness_delta=32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta=18),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
