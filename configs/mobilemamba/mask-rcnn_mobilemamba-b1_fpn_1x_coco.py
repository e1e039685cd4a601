# Mask R-CNN + MobileMamba-B1 on COCO 2017, 1x (12 epochs): the authors' setting (paper: 40.6
# box AP, 37.4 mask AP, 38.0M parameters). Their released maskrcnn.pth evaluates with this
# config as it is:
#   python tools/test.py configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py maskrcnn.pth
# Training: 4 images per GPU on 4 GPUs (16 per step), the recipe of _base_/schedule_det_adamw-1x.py:
#   bash tools/dist_train.sh configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py 4
# (other totals: --auto-scale-lr). Test time: images resized into 1333x800, padded to a
# multiple of 32.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/mobilemamba-b1_det.py',
    './_base_/schedule_det_adamw-1x.py',
]

model = dict(
    backbone={{_base_.mobilemamba_b1}},
    # The authors' EfficientViTFPN, as MobileMambaFPN computes it: two transposed-conv levels
    # below stride 16 give strides 4..64, as the RPN anchors and RoI extractors expect. Their
    # init: Xavier on the 3x3/1x1 convs, mmcv's Kaiming on the transposed convs.
    neck=dict(
        _delete_=True,
        type='MobileMambaFPN',
        in_channels=[200, 376, 448],
        out_channels=256,
        num_deconv_levels=2,
        num_outs=5,
        init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')))

train_dataloader = dict(batch_size=4, num_workers=4)
