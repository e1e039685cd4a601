"""Atomic writes: a failure or a kill mid-write leaves the previous file intact."""
import os
import subprocess
import sys
import textwrap

import pytest
from mmengine.fileio import get_file_backend

from mmmobilemamba.engine import (AtomicLocalBackend, atomic_write_bytes, atomic_write_text,
                                  remove_stale_temp_files)


def test_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / 'a' / 'b' / 'file.bin'
    atomic_write_bytes(target, b'first')
    atomic_write_text(target, 'second')
    assert target.read_text() == 'second'
    assert os.listdir(target.parent) == ['file.bin']


@pytest.mark.parametrize('failing', ['fsync', 'replace'])
def test_failure_mid_write_keeps_previous_file(tmp_path, monkeypatch, failing):
    target = tmp_path / 'epoch_1.pth'
    target.write_bytes(b'good checkpoint')

    def fail(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match='disk full'):
        atomic_write_bytes(target, b'x' * 1_000_000)
    assert target.read_bytes() == b'good checkpoint'
    assert os.listdir(tmp_path) == ['epoch_1.pth']  # no temp file left behind


def test_kill_mid_write_keeps_previous_file_and_stale_temp_is_cleaned(tmp_path):
    target = tmp_path / 'iter_4.pth'
    target.write_bytes(b'good checkpoint')
    # SIGKILL the writer once the new bytes are in the temp file, before the rename.
    script = textwrap.dedent(f'''
        import os, signal
        from mmmobilemamba.engine import atomic_io
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        atomic_io.atomic_write_bytes({str(target)!r}, b'x' * 1_000_000)
    ''')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert target.read_bytes() == b'good checkpoint'
    stale = [name for name in os.listdir(tmp_path) if name != 'iter_4.pth']
    assert len(stale) == 1 and stale[0].startswith('.iter_4.pth.')
    assert remove_stale_temp_files(tmp_path) == [str(tmp_path / stale[0])]
    assert os.listdir(tmp_path) == ['iter_4.pth']


def test_backend_is_registered_with_mmengine_fileio(tmp_path):
    backend = get_file_backend(str(tmp_path), backend_args=dict(backend='atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put(b'data', tmp_path / 'x.pth')
    assert backend.get(tmp_path / 'x.pth') == b'data'
