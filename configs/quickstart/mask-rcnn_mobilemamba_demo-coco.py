# Quickstart: Mask R-CNN with a small MobileMamba on the built-in shapes data (boxes and
# masks), trained from scratch on a CPU. Not a paper setting: see
# configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py for that.
#
#   python tools/misc/generate_demo_data.py --task det
#   python tools/train.py configs/quickstart/mask-rcnn_mobilemamba_demo-coco.py
#   python tools/test.py configs/quickstart/mask-rcnn_mobilemamba_demo-coco.py \
#       work_dirs/mask-rcnn_mobilemamba_demo-coco/epoch_N.pth --show-dir vis
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/demo_coco.py',
    './_base_/demo_coco_runtime.py',
    './_base_/mobilemamba_tiny.py',
]
work_dir = 'work_dirs/mask-rcnn_mobilemamba_demo-coco'
pretrained = None  # from scratch (a path here loads MobileMamba weights of the same arch)

neck_channels = 64
# On the 2x-upsampled images (see _base_/demo_coco.py) one transposed-conv level gives
# strides 8..128, i.e. the usual 4..64 of the original image.
strides = [8, 16, 32, 64, 128]
model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(
        _delete_=True,
        type='MobileMamba',
        arch={{_base_.tiny_arch}},  # ./_base_/mobilemamba_tiny.py
        out_indices=(0, 1, 2),
        norm_eval=False,  # from scratch: BatchNorm statistics must be learned
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='MobileMambaFPN',
        in_channels=[64, 128, 192],
        out_channels=neck_channels,
        num_deconv_levels=1,
        add_extra_convs='on_input',
        num_outs=5,
        norm_cfg=dict(type='BN', requires_grad=True)),
    rpn_head=dict(
        in_channels=neck_channels,
        feat_channels=neck_channels,
        # shapes of 32-220 px: anchors of 32 px at stride 8 up to 512 px at 128
        anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0], strides=strides)),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=neck_channels, featmap_strides=strides[:4]),
        bbox_head=dict(in_channels=neck_channels, fc_out_channels=256, num_classes=5),
        mask_roi_extractor=dict(out_channels=neck_channels, featmap_strides=strides[:4]),
        mask_head=dict(in_channels=neck_channels, conv_out_channels=neck_channels,
                       num_classes=5)),
    # few objects per image: fewer proposals and RoI samples than for COCO
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=50)))

img_scale = {{_base_.img_scale}}
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=img_scale),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator

# the 40-epoch schedule of _base_/demo_coco_runtime.py, at a lower lr
optim_wrapper = dict(optimizer=dict(lr=1e-3))
