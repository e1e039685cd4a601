# Semantic FPN + MobileMamba-B4 on ADE20K, 512x512 crops, 160k iterations (paper setting).
#
# 4 GPUs x 8 images = 32 images per step:
#   tools/dist_train.sh configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py 4
# With another GPU count keep 32 images per step (e.g. 8 GPUs and
# --cfg-options train_dataloader.batch_size=4), or the results will not match the paper.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

# ImageNet-1k MobileMamba-B4 weights. Download the released classification checkpoint
# (mobilemamba_b4.pth) from the authors' MobileMamba GitHub release page, then either point
# `pretrained` at it directly or convert it once to our key layout:
#   python tools/model_converters/mobilemamba_official.py SRC.pth checkpoints/mobilemamba_b4.pth
# `pretrained = None` here trains the backbone from scratch (with a warning); a missing file
# stops training. In a config inheriting this one, set model = dict(backbone=dict(init_cfg=...))
# instead: the model dict below is built with this file's value.
pretrained = 'checkpoints/mobilemamba_b4.pth'

crop_size = (512, 512)
num_classes = 150
data_preprocessor = dict(size=crop_size)
model = dict(
    pretrained=None,  # the ResNet base sets 'open-mmlab://resnet50_v1c' here
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='MobileMamba',
        arch='b4',
        out_indices=(0, 1, 2),  # strides 16, 32, 64; channels 200, 376, 448
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        drop_path_rate=None,  # the release's rate for B4 (0.03)
        # Plain BN in the backbone: 8 images per GPU give stable statistics and it matches the
        # classification release; the heads keep mmseg's SyncBN (reverted to BN on one GPU).
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[200, 376, 448], out_channels=256, num_outs=3),
    decode_head=dict(
        in_channels=[256, 256, 256],
        in_index=[0, 1, 2],
        feature_strides=[16, 32, 64],
        channels=128,
        num_classes=num_classes))

train_dataloader = dict(batch_size=8, num_workers=4)  # x 4 GPUs = 32 images per step
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

# Semantic FPN recipe of the paper (as PVT / PoolFormer / EfficientFormer): AdamW, lr 2e-4,
# weight decay 1e-4, poly decay (power 0.9) to 0. mmseg's 160k base has SGD and a PolyLR with
# eta_min=1e-4, both replaced here.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
# The base's top-level `optimizer` (SGD) is not used by the runner; replaced so that the
# dumped config does not mislead.
optimizer = dict(optim_wrapper['optimizer'], _delete_=True)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3,
                    save_best='mIoU', rule='greater'))
custom_hooks = [dict(type='FiniteLossGuardHook')]
# For --auto-scale-lr: the lr above is for 32 images per step.
auto_scale_lr = dict(enable=False, base_batch_size=32)
