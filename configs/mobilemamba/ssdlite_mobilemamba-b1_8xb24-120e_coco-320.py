# SSDLite + MobileMamba-B1 on COCO 2017 at 320x320, 120 epochs: the authors' setting (paper:
# 24.0 box AP, 1.7G FLOPs). Their released ssdlite.pth evaluates with this config as it is:
#   python tools/test.py configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py ssdlite.pth
# Training: 24 images per GPU on 8 GPUs (192 per step):
#   bash tools/dist_train.sh configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py 8
# mmdet's MobileNetV2 SSDLite (anchors, depthwise neck and head, Expand + MinIoURandomCrop
# augmentation, COCO repeated 5 times per epoch) with the backbone's stride-16/32 stages and
# the authors' optimiser.
#
# Parameters: the paper's 18.0M count the backbone's third stage, which SSDLite never reads;
# it is not built here (see _base_/mobilemamba-b1_det.py), so the model has fewer parameters
# and computes the same detections.
_base_ = [
    'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
    './_base_/mobilemamba-b1_det.py',
]

model = dict(
    backbone={{_base_.mobilemamba_b1_ssdlite}},
    # Depthwise extra levels on the stride-32 map: strides 16, 32, 64, 128, 256, 512.
    neck=dict(in_channels=(200, 376), out_channels=(200, 376, 512, 256, 256, 128)),
    # SSDLiteHead: mmdet's SSDHead, with what its prediction needs under mmdet 3.3 (the
    # authors patched their copy of mmdet for the same AttributeError); same keys and outputs.
    bbox_head=dict(type='SSDLiteHead', in_channels=(200, 376, 512, 256, 256, 128)))

train_dataloader = dict(num_workers=12)

# The authors' optimiser: AdamW lr 2.4e-3 (12x the 16-image detection lr for 12x the batch),
# weight decay 0.05 except the SS2D LayerNorms, gradients clipped to norm 0.1.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2.4e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),  # as detection
    clip_grad=dict(max_norm=0.1, norm_type=2))
# Warm-up over 500 iterations from 1e-5 x lr, the full lr until the end of epoch 61, then
# cosine annealing stepped once per epoch over epochs 62-120 (the gain comes there).
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-5, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', begin=60, T_max=60, end=120, by_epoch=True, eta_min=0),
]
# The base's auto_scale_lr (base_batch_size=192) fits: --auto-scale-lr rescales the lr.
