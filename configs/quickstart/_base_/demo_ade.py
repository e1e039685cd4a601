# The built-in synthetic ADE20K-layout "shapes" set (7 classes), small images for CPU runs.
# Create it once (seconds, no download):
#   python tools/misc/generate_demo_data.py --task seg        # -> data/demo_ade (160x160)
# Label maps store 0 = ignore and 1..7 = classes, read with reduce_zero_label=True. mmseg's
# ADE20KDataset hard-codes the 150 ADE classes, so the generic BaseSegDataset is used with the
# classes of mmmobilemamba.datasets.synthetic.SEG_CLASSES / SEG_PALETTE (written out here:
# configs cannot import our package).
dataset_type = 'BaseSegDataset'
data_root = 'data/demo_ade'
metainfo = dict(
    classes=('sky', 'grass', 'sand', 'water', 'circle', 'square', 'triangle'),
    palette=[(135, 206, 235), (34, 139, 34), (238, 214, 175), (0, 90, 160), (220, 20, 60),
             (255, 160, 0), (150, 0, 210)])
num_classes = 7
image_scale = (160, 160)  # the generated images' size
crop_size = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    # a broken image fails the evaluation loudly instead of being skipped
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    # annotations after Resize: metrics are computed at the original size
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
