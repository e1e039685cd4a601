# PSPNet + MobileMamba-B4 on ADE20K, 512x512 crops, 80k iterations: the authors' setting
# (paper: 36.9 mIoU, 20.5M parameters). Their released pspnet.pth evaluates with this config as
# it is (whole image resized into 2048x512, no sliding window):
#   python tools/test.py configs/mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py pspnet.pth
# Training: 8 images per GPU on 4 GPUs, the recipe of _base_/schedule_seg_adamw-80k.py:
#   bash tools/dist_train.sh configs/mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py 4
_base_ = [
    'mmseg::_base_/models/pspnet_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/ade20k_4xb8.py',
    './_base_/mobilemamba-b4_seg.py',
    './_base_/schedule_seg_adamw-80k.py',
]

crop_size = (512, 512)
model = dict(
    pretrained=None,  # the ResNet base sets 'open-mmlab://resnet50_v1c' here
    data_preprocessor=dict(size=crop_size),  # pads training crops; no test-time padding
    backbone={{_base_.mobilemamba_b4}},
    # pyramid pooling (bins 1, 2, 3, 6) on the last stage (stride 64)
    decode_head=dict(in_channels=448, in_index=2, channels=256, num_classes=150),
    # auxiliary FCN head on stage 1 (stride 32), loss weight 0.4
    auxiliary_head=dict(in_channels=376, in_index=1, num_classes=150))
