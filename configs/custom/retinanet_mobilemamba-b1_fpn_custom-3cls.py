# Fine-tune RetinaNet + MobileMamba-B1 on your own 3-class detection set (COCO-format JSON).
# See docs/finetune.md. Only what differs from the COCO config is written here.
#
#   python tools/misc/check_dataset.py configs/custom/retinanet_mobilemamba-b1_fpn_custom-3cls.py
#   python tools/train.py configs/custom/retinanet_mobilemamba-b1_fpn_custom-3cls.py
_base_ = ['../mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py']

classes = ('person', 'car', 'bicycle')  # your class names, in the order of the JSON ids
data_root = 'data/my_det/'              # annotations/{train,val}.json, images/{train,val}/

# Start from the released COCO detector: its class-dependent layers (retina_cls) have 80
# classes and are re-initialised for 3; train.py reports exactly which tensors it skipped.
# The backbone's ImageNet checkpoint is then not read: load_from brings the backbone too.
# Set to None to start from the ImageNet backbone alone (the base config's init_cfg; another
# file: model = dict(backbone=dict(init_cfg=dict(checkpoint=PATH))), none: init_cfg=None).
load_from = 'weights/downstream/det/retinanet.pth'  # the authors' RetinaNet-B1, as released

model = dict(bbox_head=dict(num_classes=len(classes)))

metainfo = dict(classes=classes)
# LoadImageFromFile (mmmobilemamba's checked loader in mmdet pipelines): on_error='skip' skips
# a corrupt training image with a warning naming it (remove it to stop instead); at test time
# a corrupt image stops the run with the file's name.
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 ann_file='annotations/train.json', data_prefix=dict(img='images/train/')))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline,
                 ann_file='annotations/val.json', data_prefix=dict(img='images/val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# Shorter schedule and lower lr than COCO training from ImageNet weights.
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=2, max_keep_ckpts=2,
                                     save_best='coco/bbox_mAP', rule='greater'))
