"""Resuming mmengine checkpoints with torch.load(weights_only=True), and refusing unsafe ones."""
import os
import pickle

import numpy as np
import pytest
import torch
from engine_toys import make_runner
from mmengine.logging import HistoryBuffer

from mmmobilemamba.engine import checkpoint_safe_globals, register_checkpoint_safe_globals
from mmmobilemamba.engine.checkpoint_safety import restricted_getattr


def _train(work_dir, **kwargs):
    runner = make_runner(work_dir, **kwargs)
    runner.train()
    return runner


def test_real_mmengine_checkpoint_loads_with_weights_only(tmp_path):
    _train(tmp_path, max_iters=2, interval=2)
    checkpoint = torch.load(tmp_path / 'iter_2.pth', weights_only=True)
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'} <= set(checkpoint)
    buffer = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert np.isfinite(buffer.mean())  # the statistic methods came back through getattr


def test_resume_restores_iteration_optimizer_and_scheduler(tmp_path):
    _train(tmp_path, max_iters=4, interval=2)
    resumed = make_runner(tmp_path, max_iters=6, interval=2, resume=True)
    resumed.load_or_resume()
    assert resumed.iter == 4
    saved = torch.load(tmp_path / 'iter_4.pth', weights_only=True)
    momentum = resumed.optim_wrapper.optimizer.state_dict()['state'][0]['momentum_buffer']
    assert torch.equal(momentum, saved['optimizer']['state'][0]['momentum_buffer'])
    assert resumed.param_schedulers[0].last_step == saved['param_schedulers'][0]['last_step']
    resumed.train()
    assert resumed.iter == 6


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ('touch pwned',))


class _ReachesBeyondHistoryBuffer:
    """Uses getattr, as HistoryBuffer pickles do, on an attribute we do not allow."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload', [_RunsCode(), _ReachesBeyondHistoryBuffer()])
def test_checkpoint_with_unlisted_global_is_refused(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': payload}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not (tmp_path / 'pwned').exists()


def test_restricted_getattr_allows_only_statistic_methods():
    assert restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in [(HistoryBuffer, '__class__'), (np.ndarray, 'tofile'), (os, 'system')]:
        with pytest.raises(pickle.UnpicklingError):
            restricted_getattr(obj, name)


def test_registration_is_idempotent_and_names_numpy_1_modules():
    register_checkpoint_safe_globals()
    before = len(torch.serialization.get_safe_globals())
    register_checkpoint_safe_globals()
    assert len(torch.serialization.get_safe_globals()) == before
    names = {entry[1] for entry in checkpoint_safe_globals() if isinstance(entry, tuple)}
    assert {'builtins.getattr', 'numpy.core.multiarray._reconstruct',
            'numpy._core.multiarray.scalar'} <= names
    assert getattr not in checkpoint_safe_globals()  # never the real getattr
