# The authors' Semantic FPN recipe, 160k iterations for 32 images per step: AdamW lr 1.2e-4,
# weight decay 0.05 except the SS2D LayerNorms, the decode head at 10x the lr (1.2e-3), no
# gradient clipping; linear warm-up over 1,500 iterations from 1e-6 x lr, the full lr to
# iteration 80k, then cosine annealing per iteration to 0 at 160k. Checkpoints and validation
# every 16k iterations.
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # 'norm': the 14 SS2D LayerNorm tensors; 'head': the 14 tensors of decode_head (the FPN
    # neck and the backbone keep 1.2e-4). The authors also list 'pos_block', which names no
    # parameter of this model.
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'head': dict(lr_mult=10.0)}))
optimizer = None  # the base's SGD, which the runner never reads
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', begin=80000, T_max=80000, end=160000, by_epoch=False,
         eta_min=0),
]
