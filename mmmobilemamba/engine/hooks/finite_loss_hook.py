"""Stop training at the first non-finite loss, before anything saves the broken state."""
import math
from typing import Dict, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


_HINTS = ('Usual causes: learning rate too high (lower optimizer.lr or add warm-up), '
          'boxes/labels out of range (run tools/misc/check_dataset.py), or fp16 overflow '
          '(--amp: try FiniteLossGuardHook(patience=3), or train in fp32).')


class NonFiniteLossError(RuntimeError):
    """Raised by :class:`FiniteLossGuardHook` when a loss became NaN or Inf."""


def non_finite_losses(log_vars: Dict[str, object]) -> Dict[str, float]:
    """The loss terms (keys containing ``'loss'``, as mmengine sums them) that are NaN/Inf.

    Args:
        log_vars: What ``model.train_step`` returns: names to scalar tensors or numbers.

    Returns:
        ``{name: value}`` of the non-finite terms, in the order of ``log_vars``.
    """
    bad = {}
    for name, value in log_vars.items():
        if 'loss' not in name:
            continue  # accuracies and other logged metrics are not optimised
        number = float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)
        if not math.isfinite(number):
            bad[name] = number
    return bad


def _any_rank_bad(is_bad: bool, device: torch.device) -> bool:
    # log_vars are not averaged across ranks: agree, so every rank stops at the same iteration
    # instead of the healthy ones hanging in the next all-reduce.
    if get_world_size() <= 1:
        return is_bad
    flag = torch.tensor([1.0 if is_bad else 0.0], device=device)
    all_reduce(flag, op='sum')
    return bool(flag.item() > 0)


@HOOKS.register_module()
class FiniteLossGuardHook(Hook):
    """Raise :class:`NonFiniteLossError` when a training loss becomes NaN or Inf.

    Config: ``custom_hooks = [dict(type='FiniteLossGuardHook')]``.

    It checks every loss term after every iteration and, with the highest priority, runs before
    the checkpoint hook of the same iteration, so no checkpoint of the broken weights is
    written and the last good checkpoint stays the one ``--resume`` picks up. The message names
    the iteration as the training log counts it (1-based), the epoch, and each non-finite term.

    Args:
        patience: Consecutive non-finite iterations tolerated before stopping. Keep 0 for fp32.
            With AMP (``AmpOptimWrapper``) a transient overflow is normal: the grad scaler skips
            that step and lowers the scale, so e.g. ``patience=3`` avoids stopping on it.
    """

    priority = 'HIGHEST'

    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError(f'patience must be >= 0, got {patience}')
        self.patience = patience
        self._bad_in_a_row = 0

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[object] = None,
                         outputs: Optional[dict] = None) -> None:
        """Check ``outputs`` (the iteration's losses) and stop on a non-finite one."""
        if not outputs:
            return
        bad = non_finite_losses(outputs)
        device = next((v.device for v in outputs.values() if torch.is_tensor(v)),
                      torch.device('cpu'))
        if not _any_rank_bad(bool(bad), device):
            self._bad_in_a_row = 0
            return
        self._bad_in_a_row += 1
        if self._bad_in_a_row <= self.patience:
            runner.logger.warning(self._message(runner, bad, stopping=False))
            return
        message = self._message(runner, bad, stopping=True)
        runner.logger.error(message)
        raise NonFiniteLossError(message)

    def _message(self, runner, bad: Dict[str, float], stopping: bool) -> str:
        # runner.iter is incremented after this hook: +1 gives the number the log shows.
        where = f'iteration {runner.iter + 1} (epoch {runner.epoch + 1})'
        terms = ', '.join(f'{name}={value}' for name, value in bad.items())
        if not terms:
            terms = 'a loss on another rank'
        if not stopping:
            return (f'Non-finite loss at {where}: {terms}; tolerated '
                    f'({self._bad_in_a_row}/{self.patience} in a row)')
        return (f'Training stopped: non-finite loss at {where}: {terms}. No checkpoint of this '
                f'state was saved; the last checkpoint in {runner.work_dir} is intact. {_HINTS}')
