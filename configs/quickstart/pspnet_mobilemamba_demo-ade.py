# Quickstart: PSPNet + a small MobileMamba, trained from scratch on the built-in demo set.
#
#   python tools/misc/generate_demo_data.py --task seg          # once: data/demo_ade
#   python tools/train.py configs/quickstart/pspnet_mobilemamba_demo-ade.py
#   python tools/test.py configs/quickstart/pspnet_mobilemamba_demo-ade.py \
#       work_dirs/pspnet_mobilemamba_demo-ade/iter_1000.pth
#
# Same layout as configs/mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py
# (PPM on the last stage, auxiliary FCN on stage 1), scaled down for a CPU: a narrow
# one-block-per-stage MobileMamba, 64-channel heads, 128 px crops. Not tuned for accuracy:
# the stride-64 pyramid-pooling input is only 2x2 (128 px) to 3x3 (160 px) cells here; the
# FPN quickstart is the one with a measured result (docs/demo_results.md).
_base_ = [
    'mmseg::_base_/models/pspnet_r50-d8.py',
    './_base_/demo_ade.py',
    './_base_/demo_ade_runtime.py',  # 1000 iterations, hooks, runtime
    './_base_/mobilemamba_tiny.py',
]

pretrained = None  # from scratch (the demo set is easy; this narrow arch has no release)

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
    decode_head=dict(
        in_channels=192,
        in_index=2,
        channels=64,
        # bins 1/2/3 fit the 2x2-3x3 maps of 128-160 px images (6 would only repeat cells)
        pool_scales=(1, 2, 3),
        dropout_ratio=0.0,
        num_classes=7,  # SEG_CLASSES of ./_base_/demo_ade.py
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=128,
        in_index=1,
        channels=64,
        dropout_ratio=0.0,
        num_classes=7,
        norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

work_dir = 'work_dirs/pspnet_mobilemamba_demo-ade'
