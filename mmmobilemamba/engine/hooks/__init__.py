"""Training hooks registered in mmengine's root ``HOOKS`` registry (found by mmdet and mmseg)."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .finite_loss_hook import FiniteLossGuardHook, NonFiniteLossError, non_finite_losses

__all__ = ['AtomicCheckpointHook', 'FiniteLossGuardHook', 'NonFiniteLossError', 'non_finite_losses']
