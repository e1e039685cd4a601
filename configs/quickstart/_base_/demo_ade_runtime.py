# Schedule, hooks and runtime of the quickstart segmentors (configs/quickstart/*_demo-ade.py,
# with ./demo_ade.py for the data): 1000 iterations of AdamW with a short warm-up and a linear
# decay, validation and a checkpoint (best mIoU kept) every 250, one CPU process.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmmobilemamba'], allow_failed_imports=False)

max_iters = 1000
val_interval = 250
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    # written to a temporary file and renamed: an interrupted run leaves no half-written file
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=val_interval,
                    max_keep_ckpts=2, save_best='mIoU', rule='greater'))
# stop at the first NaN/Inf loss instead of training on garbage
custom_hooks = [dict(type='FiniteLossGuardHook')]
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))  # runs on a CPU
randomness = dict(seed=0)
