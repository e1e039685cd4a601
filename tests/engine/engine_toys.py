"""A tiny mmengine model/dataset/runner for the engine tests (CPU, milliseconds per iteration)."""
import math
from typing import Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel
from tiny_models import TINY_ARCH  # noqa: F401  (re-exported for the engine tests)
from torch.utils.data import Dataset


class ToyModel(BaseModel):
    """Linear regression; ``nan_at`` / ``spike_at`` make a loss non-finite at a 1-based call."""

    def __init__(self, nan_at: Optional[int] = None, spike_at: Optional[int] = None) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.nan_at = nan_at
        self.spike_at = spike_at
        self.loss_calls = 0

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)
        if mode != 'loss':
            return out
        self.loss_calls += 1
        losses = dict(loss_mse=((out - labels)**2).mean())
        if self.loss_calls == self.nan_at:
            # Poisons the weights through backward, as a real divergence does.
            losses['loss_mse'] = losses['loss_mse'] * math.nan
        # A constant term: non-finite in the log, but no effect on the gradients.
        spike = math.inf if self.loss_calls == self.spike_at else 0.0
        losses['loss_aux'] = torch.tensor(spike)
        losses['acc'] = torch.tensor(math.nan)  # not a loss: must be ignored
        return losses


class ToyDataset(Dataset):
    """Eight points on a line."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=torch.tensor([float(i), 1.0]), labels=torch.tensor([2.0 * i]))


def runner_kwargs(work_dir, model=None, max_iters: int = 8, interval: int = 2,
                  checkpoint: Optional[dict] = None, custom_hooks=None, **extra) -> dict:
    """Keyword arguments of an iteration-based mmengine ``Runner`` over the toy problem."""
    checkpoint = checkpoint or dict(type='AtomicCheckpointHook', interval=interval,
                                    by_epoch=False)
    kwargs = dict(
        model=model or ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.001, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[3], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=custom_hooks,
        randomness=dict(seed=0),
        log_level='WARNING')
    kwargs.update(extra)
    return kwargs


def make_runner(work_dir, **kwargs):
    """A fresh ``Runner`` (see :func:`runner_kwargs`)."""
    from mmengine.runner import Runner
    return Runner(**runner_kwargs(work_dir, **kwargs))


# ------------------------------------------------------- configs for the launch/pre-flight tests


def retinanet_cfg(root, num_classes=2, **backbone):
    """A RetinaNet on a tiny MobileMamba reading ``root/ann.json`` and ``root/img/``."""
    dataset = dict(type='CocoDataset', data_root=str(root), ann_file='ann.json',
                   data_prefix=dict(img='img/'), metainfo=dict(classes=('cat', 'dog')),
                   pipeline=[dict(type='LoadImageFromFile'), dict(type='PackDetInputs')])
    return Config(dict(
        custom_imports=dict(imports=['mmmobilemamba'], allow_failed_imports=False),
        default_scope='mmdet',
        model=dict(type='RetinaNet',
                   backbone=dict(dict(type='MobileMamba', arch=TINY_ARCH), **backbone),
                   neck=dict(type='MobileMambaFPN', in_channels=[48, 64, 96], out_channels=16,
                             num_outs=3),
                   bbox_head=dict(type='RetinaHead', num_classes=num_classes, in_channels=16)),
        train_dataloader=dict(dataset=dataset),
        val_dataloader=dict(dataset=dict(dataset, test_mode=True)),
        test_dataloader=dict(dataset=dict(dataset, test_mode=True))))


def write_empty_coco_dataset(root):
    (root / 'img').mkdir()
    (root / 'ann.json').write_text('{}')  # only its existence is checked before the run
    return root


def imagenet_init(path):
    """Backbone kwargs loading an ImageNet checkpoint from ``path``."""
    return dict(init_cfg=dict(type='Pretrained', checkpoint=str(path)))


def dump_config(cfg, path):
    """Write ``cfg`` to ``path``; returns the path as a string (for argv)."""
    cfg.dump(str(path))
    return str(path)
