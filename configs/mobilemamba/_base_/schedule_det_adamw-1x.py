# The authors' detection recipe (RetinaNet, Mask R-CNN), 12 epochs for 16 images per step:
# AdamW lr 2e-4, weight decay 0.05 except the SS2D LayerNorms, gradients clipped to norm 0.1;
# linear warm-up over 500 iterations from 1e-5 x lr, the full lr until the end of epoch 7, then
# cosine annealing stepped once per epoch over epochs 8-12 (2e-4 x (1 + cos(pi k / 6)) / 2 in
# epoch 7 + k), never reaching 0.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # 'norm' names exactly the 14 LayerNorm tensors of B1's SS2D blocks (BatchNorms are 'bn').
    # The authors also list 'absolute_pos_embed' and 'relative_position_bias_table', which name
    # no parameter of these models.
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-5, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', begin=6, T_max=6, end=12, by_epoch=True, eta_min=0),
]
# The base's auto_scale_lr (base_batch_size=16) fits: --auto-scale-lr rescales the lr for
# other totals.
