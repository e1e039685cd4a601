"""AtomicCheckpointHook: complete checkpoints and pointer, outdated files removed last."""
import pytest
import torch
from engine_toys import make_runner
from mmengine.hooks import CheckpointHook

from mmmobilemamba.engine import AtomicCheckpointHook, AtomicLocalBackend, atomic_io
from mmmobilemamba.engine.launch import find_resume_checkpoint


def _pointer(work_dir):
    return (work_dir / 'last_checkpoint').read_text()


def test_saves_through_the_atomic_backend_and_points_at_the_last(tmp_path):
    runner = make_runner(tmp_path, max_iters=4, interval=2)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    assert isinstance(hook.file_backend, AtomicLocalBackend)
    assert _pointer(tmp_path) == str(tmp_path / 'iter_4.pth')
    assert torch.load(tmp_path / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4


def test_max_keep_removes_outdated_checkpoints(tmp_path):
    checkpoint = dict(type='AtomicCheckpointHook', interval=1, by_epoch=False, max_keep_ckpts=2)
    make_runner(tmp_path, max_iters=5, checkpoint=checkpoint).train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth', 'iter_5.pth']


def test_failed_save_keeps_previous_checkpoint_and_pointer(tmp_path, monkeypatch):
    # With max_keep_ckpts=1 mmengine deletes iter_2.pth before writing iter_4.pth: a failure
    # (or kill) during that write would leave nothing to resume from.
    checkpoint = dict(type='AtomicCheckpointHook', interval=2, by_epoch=False, max_keep_ckpts=1)
    runner = make_runner(tmp_path, max_iters=4, checkpoint=checkpoint)
    real_write = atomic_io.atomic_write_bytes

    def fail_on_iter_4(path, data):
        if str(path).endswith('iter_4.pth'):
            raise OSError('killed while saving')
        real_write(path, data)

    monkeypatch.setattr(atomic_io, 'atomic_write_bytes', fail_on_iter_4)
    with pytest.raises(OSError, match='killed while saving'):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']
    assert _pointer(tmp_path) == str(tmp_path / 'iter_2.pth')
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_2.pth')
    torch.load(tmp_path / 'iter_2.pth', weights_only=True)


def test_stale_temp_files_are_removed_before_training(tmp_path):
    (tmp_path / '.iter_2.pth.abc123.tmp').write_bytes(b'partial')
    make_runner(tmp_path, max_iters=1, interval=1).train()
    assert not list(tmp_path.glob('*.tmp'))


def test_remote_out_dir_keeps_mmengine_backend():
    hook = AtomicCheckpointHook(interval=1, out_dir='s3://bucket/ckpts')
    assert hook.backend_args is None
    assert isinstance(hook, CheckpointHook)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_hooks_resolve_from_mmdet_and_mmseg_runners(tmp_path, scope):
    pytest.importorskip(scope)
    runner = make_runner(tmp_path, max_iters=1, default_scope=scope,
                         custom_hooks=[dict(type='FiniteLossGuardHook')])
    names = [type(h).__name__ for h in runner.hooks]
    assert 'AtomicCheckpointHook' in names and 'FiniteLossGuardHook' in names
