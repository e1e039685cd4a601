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
    './_base_/demo_ade.py',
    './_base_/demo_ade_runtime.py',  # 1000 iterations, hooks, runtime
    './_base_/mobilemamba_tiny.py',
]

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

work_dir = 'work_dirs/fpn_mobilemamba_demo-ade'
