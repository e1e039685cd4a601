"""FiniteLossGuardHook stops at the first non-finite loss, before a checkpoint of it exists."""
import math

import pytest
import torch
from engine_toys import ToyModel, make_runner

from mmmobilemamba.engine import FiniteLossGuardHook, NonFiniteLossError, non_finite_losses

GUARD = [dict(type='FiniteLossGuardHook')]


def test_nan_at_iteration_k_stops_with_iteration_and_loss_named(tmp_path):
    runner = make_runner(tmp_path, model=ToyModel(nan_at=5), max_iters=8, interval=2,
                         custom_hooks=GUARD)
    with pytest.raises(NonFiniteLossError) as err:
        runner.train()
    message = str(err.value)
    assert 'iteration 5 ' in message and 'loss_mse=nan' in message
    assert 'loss_aux' not in message  # finite terms are not blamed
    # iter_4 was the last good state; nothing was written for 5 or 6.
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth', 'iter_4.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_4.pth')
    state = torch.load(tmp_path / 'iter_4.pth', weights_only=True)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values())


def test_patience_tolerates_a_transient_spike(tmp_path):
    runner = make_runner(tmp_path, model=ToyModel(spike_at=3), max_iters=5,
                         custom_hooks=[dict(type='FiniteLossGuardHook', patience=1)])
    runner.train()
    assert runner.iter == 5


def test_spike_without_patience_names_the_term(tmp_path):
    runner = make_runner(tmp_path, model=ToyModel(spike_at=3), max_iters=5, custom_hooks=GUARD)
    with pytest.raises(NonFiniteLossError, match=r'iteration 3 .*loss_aux=inf'):
        runner.train()


def test_non_finite_losses_ignores_non_loss_entries():
    log_vars = dict(loss=torch.tensor(math.nan), loss_cls=torch.tensor(1.0),
                    loss_bbox=float('inf'), acc=torch.tensor(math.nan))
    assert list(non_finite_losses(log_vars)) == ['loss', 'loss_bbox']


def test_negative_patience_is_rejected():
    with pytest.raises(ValueError):
        FiniteLossGuardHook(patience=-1)
