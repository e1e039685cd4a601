# ADE20K as the authors train and test on it: mmseg's ADE20K pipelines (512x512 crops of
# images resized into 2048x512 x [0.5, 2], flip, photometric distortion; testing on the whole
# image resized into 2048x512), 8 images per GPU on 4 GPUs (32 per step).
#   bash tools/dist_train.sh CONFIG 4
# With another GPU count keep 32 images per step (e.g. 8 GPUs and
# --cfg-options train_dataloader.batch_size=4): the recipe's lr is for 32. Or change the total
# and add --auto-scale-lr: the lr is then multiplied by total / 32 (docs/distributed.md).
_base_ = 'mmseg::_base_/datasets/ade20k.py'

train_dataloader = dict(batch_size=8, num_workers=8)
val_dataloader = dict(batch_size=1, num_workers=2)
test_dataloader = val_dataloader
# Not in the authors' configs (mmseg's bases set none): the total the recipe's lr is for, read
# by tools/train.py --auto-scale-lr only.
auto_scale_lr = dict(enable=False, base_batch_size=32)
