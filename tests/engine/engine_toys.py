"""A tiny mmengine model/dataset/runner for the engine tests (CPU, milliseconds per iteration)."""
import math
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModel
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
