# Data of the quickstart detectors: the built-in synthetic shapes data
# (python tools/misc/generate_demo_data.py --task det -> data/demo_coco/, 192 px images),
# pipelines, loaders and COCO evaluation. Inherited, with ./demo_coco_runtime.py (schedule,
# hooks, runtime), by configs/quickstart/*_mobilemamba_demo-coco.py.
dataset_type = 'CocoDataset'
data_root = 'data/demo_coco/'
# mmmobilemamba.datasets.synthetic.DEMO_CLASSES / DEMO_PALETTE, written out (configs cannot
# import the package).
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross'),
    palette=[(220, 20, 60), (0, 120, 255), (255, 160, 0), (150, 0, 210), (0, 170, 80)])
# The images are 192 px and the shapes 16-110 px, but MobileMamba's first feature map is at
# stride 16: a 16 px shape would cover a single cell. The models therefore see the images
# upsampled 2x (shapes of 32-220 px), which costs less than adding finer pyramid levels.
img_scale = (384, 384)
backend_args = None

train_pipeline = [
    # a broken image is skipped with a warning naming it (another sample is drawn)
    dict(type='LoadImageFromFile', on_error='skip', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    # 200 training images: scale jitter, crops, flips (the shapes are randomly rotated, so
    # vertical flips are fair) and colour changes keep the model from memorising them
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=img_scale),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs')
]
test_pipeline = [
    # evaluation must see every image: a broken one stops the run, naming the file
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
