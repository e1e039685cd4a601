# The authors' DeepLabv3 / PSPNet recipe, 80k iterations for 32 images per step: AdamW lr
# 1.2e-4, weight decay 0.05 except the SS2D LayerNorms, gradients clipped to norm 0.1; linear
# warm-up over 500 iterations from 1e-5 x lr, the full lr to iteration 40k, then cosine
# annealing per iteration to 0 at 80k. Checkpoints and validation every 8k iterations.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # 'norm' names exactly the 14 LayerNorm tensors of B4's SS2D blocks (BatchNorms are 'bn').
    # The authors also list 'absolute_pos_embed' and 'relative_position_bias_table', which name
    # no parameter of these models.
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=0.1, norm_type=2))
optimizer = None  # the base's SGD, which the runner never reads
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-5, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', begin=40000, T_max=40000, end=80000, by_epoch=False,
         eta_min=0),
]
