# Fine-tune Semantic FPN + MobileMamba-B4 on your own 4-class segmentation set in the ADE20K
# layout (what tools/dataset_converters/masks2seg.py writes): label maps are 8-bit PNGs with
# 0 = ignore / unlabelled and classes 1..4 (reduce_zero_label=True maps them to 0..3).
# See docs/finetune.md. Only what differs from the ADE20K config is written here.
#
#   python tools/misc/check_dataset.py configs/custom/fpn_mobilemamba-b4_custom-4cls-512x512.py --full
#   python tools/train.py configs/custom/fpn_mobilemamba-b4_custom-4cls-512x512.py
_base_ = ['../mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py']

classes = ('road', 'building', 'vegetation', 'sky')
palette = [[128, 64, 128], [70, 70, 70], [107, 142, 35], [70, 130, 180]]
data_root = 'data/my_seg/'  # images/{training,validation}/*.jpg, annotations/{...}/*.png

# Start from the released ADE20K segmentor: conv_seg (150 classes) is re-initialised for 4.
# The backbone's ImageNet checkpoint is then not read: load_from brings the backbone too.
# Set to None to start from the ImageNet backbone alone (the base config's init_cfg; another
# file: model = dict(backbone=dict(init_cfg=dict(checkpoint=PATH))), none: init_cfg=None).
load_from = 'weights/downstream/seg/fpn.pth'  # the authors' Semantic FPN-B4, as released

model = dict(decode_head=dict(num_classes=len(classes)))

dataset_type = 'BaseSegDataset'
metainfo = dict(classes=classes, palette=palette)
common = dict(type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
              seg_map_suffix='.png', reduce_zero_label=True)
crop_size = (512, 512)
# on_error='skip': a corrupt training image is skipped with a warning naming it (at test time
# it stops the run with the file's name).
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(**common, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    dataset=dict(**common, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 20000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=2000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=500, end=max_iters, by_epoch=False),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
default_hooks = dict(checkpoint=dict(interval=2000))
