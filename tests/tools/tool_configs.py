"""Tiny self-contained datasets and configs for the train/test tool tests.

A RetinaNet (mmdet) and an FCN (mmseg) on an 8-channel ResNet-18, 64 px images: a training
iteration takes well under a second on one CPU core. Nothing here depends on the MobileMamba
backbone, so the tools are tested on their own.
"""
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DET_CLASSES = ('square', 'bar')
SEG_CLASSES = ('background', 'square', 'bar')
IMAGE_SIZE = 64


def _shape_image(rng: np.random.RandomState):
    """A noisy image with one filled square or bar; returns (image, label, box xywh, mask)."""
    img = rng.randint(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    label = int(rng.randint(0, 2))
    w, h = (20, 20) if label == 0 else (36, 10)
    x, y = int(rng.randint(2, IMAGE_SIZE - w - 2)), int(rng.randint(2, IMAGE_SIZE - h - 2))
    img[y:y + h, x:x + w] = (230, 200, 40) if label == 0 else (40, 120, 240)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask[y:y + h, x:x + w] = label + 1
    return img, label, [x, y, w, h], mask


def write_coco_dataset(root: Path, num_train: int = 4, num_val: int = 2, seed: int = 0) -> Path:
    """``root/images/*.png`` and ``root/annotations/{train,val}.json``."""
    rng = np.random.RandomState(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(exist_ok=True)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(DET_CLASSES)]
    for split, count in (('train', num_train), ('val', num_val)):
        images, annotations = [], []
        for i in range(count):
            img, label, box, _ = _shape_image(rng)
            name = f'{split}_{i}.png'
            Image.fromarray(img).save(root / 'images' / name)
            images.append(dict(id=i + 1, file_name=name, width=IMAGE_SIZE, height=IMAGE_SIZE))
            annotations.append(dict(id=i + 1, image_id=i + 1, category_id=label + 1, bbox=box,
                                    area=box[2] * box[3], iscrowd=0))
        with open(root / 'annotations' / f'{split}.json', 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return root


def write_seg_dataset(root: Path, num_train: int = 4, num_val: int = 2, seed: int = 0) -> Path:
    """``root/images/{train,val}/*.png`` and matching ``root/masks/{train,val}/*.png``."""
    rng = np.random.RandomState(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'masks' / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, _, _, mask = _shape_image(rng)
            Image.fromarray(img).save(root / 'images' / split / f'{i}.png')
            Image.fromarray(mask).save(root / 'masks' / split / f'{i}.png')
    return root


_COMMON = '''
custom_imports = dict(imports=['mmmobilemamba.engine'], allow_failed_imports=False)
data_root = {data_root!r}
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=2)
'''

DET_CONFIG = _COMMON + '''
default_scope = 'mmdet'
metainfo = dict(classes={classes!r}, palette=[(220, 20, 60), (0, 0, 230)])
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=18, base_channels=8, out_indices=(1, 2, 3),
                  norm_cfg=dict(type='BN'), norm_eval=False),
    neck=dict(type='FPN', in_channels=[16, 32, 64], out_channels=16, num_outs=3),
    bbox_head=dict(
        type='RetinaHead', num_classes={num_classes}, in_channels=16, stacked_convs=1,
        feat_channels=16,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=3, scales_per_octave=1,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                 min_pos_iou=0, ignore_iof_thr=-1),
                   sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
                   debug=False),
    test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=20))
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]
tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                                  max_per_img=20))
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(64, 64), keep_ratio=True)],
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                               'scale_factor', 'flip', 'flip_direction'))]]),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/train.json', data_prefix=dict(img='images/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=4), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/val.json', data_prefix=dict(img='images/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + '/annotations/val.json',
                     metric='bbox', format_only=False)
test_evaluator = val_evaluator
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs={max_epochs}, val_interval={max_epochs})
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='MultiStepLR', milestones=[1], by_epoch=True, gamma=0.5)]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=1, by_epoch=True)
'''

SEG_CONFIG = _COMMON + '''
default_scope = 'mmseg'
metainfo = dict(classes={classes!r}, palette=[(0, 0, 0), (220, 20, 60), (0, 0, 230)])
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=(64, 64)),
    backbone=dict(type='ResNetV1c', depth=18, stem_channels=8, base_channels=8,
                  out_indices=(0, 1, 2, 3), norm_cfg=norm_cfg),
    decode_head=dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
                     concat_input=False, dropout_ratio=0.0, num_classes={num_classes},
                     norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    auxiliary_head=[dict(type='FCNHead', in_channels=32, in_index=2, channels=8, num_convs=1,
                         concat_input=False, dropout_ratio=0.0, num_classes={num_classes},
                         norm_cfg=norm_cfg, align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                          loss_weight=0.4))],
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile', on_error='skip'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
                 img_suffix='.png', seg_map_suffix='.png',
                 data_prefix=dict(img_path='images/train', seg_map_path='masks/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
                 img_suffix='.png', seg_map_suffix='.png',
                 data_prefix=dict(img_path='images/val', seg_map_path='masks/val'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters}, val_interval={max_iters})
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={max_iters},
                        by_epoch=False)]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval={interval}),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
'''


def write_det_config(path: Path, data_root: Path, num_classes: int = len(DET_CLASSES),
                     max_epochs: int = 1) -> Path:
    """A RetinaNet config over :func:`write_coco_dataset` data."""
    path.write_text(DET_CONFIG.format(data_root=str(data_root), classes=DET_CLASSES,
                                      num_classes=num_classes, max_epochs=max_epochs))
    return path


def write_seg_config(path: Path, data_root: Path, num_classes: int = len(SEG_CLASSES),
                     max_iters: int = 4, interval: int = 2) -> Path:
    """An FCN config (with an auxiliary head) over :func:`write_seg_dataset` data."""
    path.write_text(SEG_CONFIG.format(data_root=str(data_root), classes=SEG_CLASSES,
                                      num_classes=num_classes, max_iters=max_iters,
                                      interval=interval))
    return path


def tool_env() -> dict:
    """Environment for tool subprocesses: the repo importable, one thread (shared CPUs)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_tool(script: str, args: Sequence[str], timeout: float = 300,
             **kwargs) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` with this interpreter; output captured as text."""
    cmd: List[str] = [sys.executable, osp.join(str(REPO), 'tools', script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env(),
                          cwd=str(REPO), **kwargs)
