# Schedule, hooks and runtime of the quickstart detectors (configs/quickstart/*_demo-coco.py,
# with ./demo_coco.py for the data): AdamW with a short warm-up and a cosine decay over 40
# epochs, from scratch on a CPU, and a chatty, crash-safe runtime. A config changes the lr
# with optim_wrapper = dict(optimizer=dict(lr=...)); another length needs its own train_cfg
# and param_scheduler (they are computed from max_epochs here).
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

max_epochs = 40
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=10.0, norm_type=2))
# the lr is for 8 images per step (demo_coco.py's batch), used by --auto-scale-lr only
auto_scale_lr = dict(enable=False, base_batch_size=8)

default_hooks = dict(
    # a progress line (iteration, losses, ETA) every 5 iterations
    logger=dict(type='LoggerHook', interval=5),
    # checkpoints are written to a temporary file and renamed: an interrupted run never
    # leaves a half-written epoch_N.pth behind
    checkpoint=dict(type='AtomicCheckpointHook', interval=10, max_keep_ckpts=2,
                    save_last=True))
# stop at the first NaN/Inf loss instead of training on garbage
custom_hooks = [dict(type='FiniteLossGuardHook')]
log_processor = dict(type='LogProcessor', window_size=5, by_epoch=True)

randomness = dict(seed=0)
# these runs train from scratch: no ImageNet weights
pretrained = None
