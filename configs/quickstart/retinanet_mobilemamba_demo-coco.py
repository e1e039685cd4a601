# Quickstart: RetinaNet with a small MobileMamba on the built-in shapes data, trained from
# scratch on a CPU in minutes (`make demo` runs it; results in docs/demo_results.md). Not a
# paper setting: see configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py for that.
#
#   python tools/misc/generate_demo_data.py --task det
#   python tools/train.py configs/quickstart/retinanet_mobilemamba_demo-coco.py
#   python tools/test.py configs/quickstart/retinanet_mobilemamba_demo-coco.py \
#       work_dirs/retinanet_mobilemamba_demo-coco/epoch_60.pth --show-dir vis
#
# On a CPU busy with other jobs, prefix OMP_NUM_THREADS=1 (scripts/demo.sh does it for you).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/demo_coco.py',
    './_base_/demo_coco_runtime.py',
    './_base_/mobilemamba_tiny.py',
]
work_dir = 'work_dirs/retinanet_mobilemamba_demo-coco'
pretrained = None  # from scratch (a path here loads MobileMamba weights of the same arch)

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
    # On the 2x-upsampled images the backbone's stride-16 map is already fine enough (stride 8
    # of the original image): no transposed-conv level; one extra level at stride 128.
    # Normalised convs everywhere help training from scratch.
    neck=dict(
        _delete_=True,
        type='MobileMambaFPN',
        in_channels=[64, 128, 192],
        out_channels=64,
        num_deconv_levels=0,
        add_extra_convs='on_input',
        num_outs=4,
        norm_cfg=dict(type='BN', requires_grad=True)),
    bbox_head=dict(
        num_classes=5,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        # shapes of 32-220 px (after the 2x resize), nearly square: one ratio, anchors of
        # 32-50 px at stride 16 up to 256-400 px at 128
        anchor_generator=dict(octave_base_scale=2, ratios=[1.0], strides=[16, 32, 64, 128]),
        # IoU-based box loss: better localisation (AP at IoU 0.75) than L1 on the deltas
        reg_decoded_bbox=True,
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=2.0)),
    test_cfg=dict(score_thr=0.05, max_per_img=50))

train_dataloader = dict(batch_size=16)

# _base_/demo_coco_runtime.py's schedule over 60 epochs, at a higher lr for 16 images
max_epochs = 60
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=3e-3))
auto_scale_lr = dict(base_batch_size=16)
