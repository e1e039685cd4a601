"""``CheckpointHook`` whose checkpoints and ``last_checkpoint`` pointer are written atomically."""
import os.path as osp
from typing import List, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..atomic_io import ATOMIC_BACKEND, atomic_write_text, remove_stale_temp_files

POINTER_FILE = 'last_checkpoint'


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """Drop-in ``CheckpointHook``: a run killed while saving never leaves a torn checkpoint.

    Use it in a config as ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook',
    interval=1))``; it takes the same arguments as mmengine's ``CheckpointHook``.

    Differences from mmengine's hook, each one so that a kill at any moment leaves the last
    complete checkpoint resumable:

    * checkpoints go through the ``'atomic_local'`` file backend (temp file in the same
      directory, fsync, ``os.replace``) unless ``backend_args`` or a remote ``out_dir`` is given;
    * the ``last_checkpoint`` pointer (what ``--resume`` with no path reads) is replaced
      atomically and only after its checkpoint is complete;
    * outdated checkpoints (``max_keep_ckpts``) are deleted after the new one and the pointer
      are in place, not before (mmengine deletes first: with ``max_keep_ckpts=1`` a kill during
      the save would leave no checkpoint at all). A kill between the two leaves one checkpoint
      too many on disk, never one too few;
    * temp files a killed save left behind are removed in ``before_train``.

    ``save_best`` checkpoints are written atomically too; the previous best file is still
    removed before the new best is written (mmengine's order), which never affects resuming.
    """

    def __init__(self,
                 interval: int = -1,
                 *,
                 out_dir: Optional[str] = None,
                 file_client_args: Optional[dict] = None,
                 backend_args: Optional[dict] = None,
                 **kwargs) -> None:
        remote = out_dir is not None and '://' in str(out_dir)
        if backend_args is None and file_client_args is None and not remote:
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(
            interval,
            out_dir=out_dir,
            file_client_args=file_client_args,
            backend_args=backend_args,
            **kwargs)

    def before_train(self, runner) -> None:
        """Set up as mmengine does, then clear temp files of saves that were killed."""
        super().before_train(runner)
        if not (is_main_process() and self._writes_locally()):
            return
        stale = remove_stale_temp_files(self.out_dir, targets='*.pth')
        stale += remove_stale_temp_files(osp.join(runner.work_dir, POINTER_FILE))
        for path in stale:
            runner.logger.warning(f'Removed {path}, left by a save that was killed')

    def _writes_locally(self) -> bool:
        return (self.backend_args or {}).get('backend') == ATOMIC_BACKEND

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """Save, then point ``last_checkpoint`` at it, then delete what is now outdated."""
        outdated = self._update_kept_steps(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        # Only the main process writes checkpoints (Runner.save_checkpoint is master_only).
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, POINTER_FILE), self.last_ckpt)
        for old_step in outdated:
            self._remove_checkpoint(old_step)

    def _update_kept_steps(self, runner, step: int) -> List[int]:
        """Record ``step`` among the kept checkpoints; return the steps that fall out.

        The message hub gets the new list before the save so that the checkpoint itself knows
        which files a resumed run keeps.
        """
        if self.max_keep_ckpts <= 0:
            return []
        # The best-checkpoint logic saves the same step a second time: nothing new to keep.
        if self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step:
            return []
        outdated = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            outdated.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated

    def _remove_checkpoint(self, step: int) -> None:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            # Some strategies (deepspeed) save checkpoints as directories.
            self.file_backend.rmtree(path)
