# Semantic FPN + MobileMamba-B4 on ADE20K, 512x512 crops, 160k iterations: the authors' setting
# (paper: 42.5 mIoU, 19.8M parameters). Their released fpn.pth evaluates with this config as it
# is (whole image resized into 2048x512, no sliding window):
#   python tools/test.py configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py fpn.pth
# Training: 8 images per GPU on 4 GPUs, the recipe of _base_/schedule_sem-fpn_adamw-160k.py:
#   bash tools/dist_train.sh configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py 4
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/ade20k_4xb8.py',
    './_base_/mobilemamba-b4_seg.py',
    './_base_/schedule_sem-fpn_adamw-160k.py',
]

crop_size = (512, 512)
model = dict(
    pretrained=None,  # the ResNet base sets 'open-mmlab://resnet50_v1c' here
    data_preprocessor=dict(size=crop_size),  # pads training crops; no test-time padding
    backbone={{_base_.mobilemamba_b4}},
    neck=dict(in_channels=[200, 376, 448], out_channels=256, num_outs=3),
    decode_head=dict(
        in_channels=[256, 256, 256],
        in_index=[0, 1, 2],
        feature_strides=[16, 32, 64],
        channels=128,
        num_classes=150))
