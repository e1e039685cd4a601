# Quickstart: Semantic FPN + a small MobileMamba, trained from scratch on the built-in demo set.
#
#   python tools/misc/generate_demo_data.py --task seg          # once: data/demo_ade
#   python tools/train.py configs/quickstart/fpn_mobilemamba_demo-ade.py
#   python tools/test.py configs/quickstart/fpn_mobilemamba_demo-ade.py \
#       work_dirs/fpn_mobilemamba_demo-ade/iter_1000.pth
#
# Runs on a CPU: on 2 cores 1000 iterations took 6 minutes, mIoU 51.9 after 250 and 59.0 at
# the end (docs/demo_results.md). On a CPU busy with other jobs prefix OMP_NUM_THREADS=1: two
# torch threads competing for two cores are up to 10x slower. Same model family as
# configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py, scaled down: a narrow
# one-block-per-stage MobileMamba, a 64-channel FPN, 128 px crops.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/demo_ade.py',
    './_base_/mobilemamba_tiny.py',
]
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

# From scratch: the demo set is easy and the released B4 weights are not needed (a
# `pretrained` path would load them into a B1-B4 arch; this narrow arch has no release).
pretrained = None

norm_cfg = dict(type='BN', requires_grad=True)  # one process, no SyncBN
model = dict(
    pretrained=None,  # the ResNet base sets 'open-mmlab://resnet50_v1c' here
    # training batches are padded to a multiple of 32 (the 128 px crops need no padding)
    data_preprocessor=dict(size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='MobileMamba',
        arch={{_base_.tiny_arch}},  # ./_base_/mobilemamba_tiny.py
        out_indices=(0, 1, 2),  # strides 16, 32, 64
        drop_path_rate=0.0,
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 192], out_channels=64, num_outs=3),
    decode_head=dict(
        in_channels=[64, 64, 64],
        in_index=[0, 1, 2],
        feature_strides=[16, 32, 64],
        channels=64,
        dropout_ratio=0.0,
        num_classes=7,  # SEG_CLASSES of ./_base_/demo_ade.py
        norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

max_iters = 1000
val_interval = 250
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=val_interval,
                    max_keep_ckpts=2, save_best='mIoU', rule='greater'))
custom_hooks = [dict(type='FiniteLossGuardHook')]
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
work_dir = 'work_dirs/fpn_mobilemamba_demo-ade'
