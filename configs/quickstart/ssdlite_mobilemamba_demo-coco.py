# Quickstart: SSDLite with a small MobileMamba on the built-in shapes data, trained from
# scratch on a CPU. Not a paper setting: see
# configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py for that.
#
# On the 2x-upsampled images (384 px, see _base_/demo_coco.py) the backbone's stride-16 and
# stride-32 maps (24 and 12 cells) get two depthwise extra levels (6 and 3 cells), each with
# SSD anchors sized for the 32-220 px shapes.
#
#   python tools/misc/generate_demo_data.py --task det
#   python tools/train.py configs/quickstart/ssdlite_mobilemamba_demo-coco.py
_base_ = [
    './_base_/demo_coco.py', './_base_/demo_coco_runtime.py', './_base_/mobilemamba_tiny.py'
]
work_dir = 'work_dirs/ssdlite_mobilemamba_demo-coco'
pretrained = None  # from scratch (a path here loads MobileMamba weights of the same arch)

ssd_channels = (64, 128, 256, 128)
ssd_norm = dict(type='BN', eps=0.001, momentum=0.03)
model = dict(
    type='SingleStageDetector',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=64),
    backbone=dict(
        type='MobileMamba',
        arch={{_base_.tiny_arch}},  # ./_base_/mobilemamba_tiny.py
        out_indices=(0, 1),  # strides 16, 32
        norm_eval=False,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        type='SSDNeck',
        in_channels=ssd_channels[:2],
        out_channels=ssd_channels,
        level_strides=(2, 2),
        level_paddings=(1, 1),
        l2_norm_scale=None,
        use_depthwise=True,
        norm_cfg=ssd_norm,
        act_cfg=dict(type='ReLU6'),
        init_cfg=dict(type='TruncNormal', layer='Conv2d', std=0.03)),
    bbox_head=dict(
        type='SSDLiteHead',  # mmdet's SSDHead, predictable under mmdet 3.3
        in_channels=ssd_channels,
        num_classes=5,
        use_depthwise=True,
        norm_cfg=ssd_norm,
        act_cfg=dict(type='ReLU6'),
        init_cfg=dict(type='Normal', layer='Conv2d', std=0.001),
        # maps of 24, 12, 6, 3 cells on 384 px images
        anchor_generator=dict(
            type='SSDAnchorGenerator',
            scale_major=False,
            strides=[16, 32, 64, 128],
            ratios=[[2], [2], [2], [2]],
            min_sizes=[32, 64, 128, 224],
            max_sizes=[64, 128, 224, 384]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[0.1, 0.1, 0.2, 0.2])),
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.5,
            min_pos_iou=0.,
            ignore_iof_thr=-1,
            gt_max_assign_all=False),
        sampler=dict(type='PseudoSampler'),
        smoothl1_beta=1.,
        allowed_border=-1,
        pos_weight=-1,
        neg_pos_ratio=3,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        nms=dict(type='nms', iou_threshold=0.45),
        min_bbox_size=0,
        score_thr=0.02,
        max_per_img=50))
# the backbone's third stage runs but SSDLite does not read it (for DDP)
find_unused_parameters = True

# the schedule (40 epochs, AdamW lr 2e-3) is that of _base_/demo_coco_runtime.py
