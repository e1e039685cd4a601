"""The repository itself: no large file committed by accident, profiler dumps ignored.

Profiler dumps (onnxruntime's ``onnxruntime_profile__*.json``, torch's ``*.pt.trace.json``,
cProfile's ``*.prof``) and downloaded wheels were once committed at the root, tens of MB that
every clone downloads for ever. Large test fixtures belong in ``tests/data/``.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 1024 * 1024  # 1 MiB
LARGE_FILES_ALLOWED_UNDER = ('tests/data/', )


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, timeout=60)


@pytest.fixture(scope='module')
def tracked_files():
    """The paths git tracks, relative to the repository root; skips outside a git checkout
    (e.g. an sdist or a copied tree)."""
    if shutil.which('git') is None:
        pytest.skip('git is not installed')
    top = _git('rev-parse', '--show-toplevel')
    if top.returncode != 0 or Path(top.stdout.decode().strip()).resolve() != REPO:
        pytest.skip(f'{REPO} is not the root of a git checkout')
    listing = _git('ls-files', '-z')
    assert listing.returncode == 0, listing.stderr.decode()
    return [name for name in listing.stdout.decode().split('\0') if name]


def test_no_large_tracked_file_outside_test_data(tracked_files):
    large = []
    for name in tracked_files:
        path = REPO / name
        # a file deleted in the working tree but not yet in the index has no size to check
        if name.startswith(LARGE_FILES_ALLOWED_UNDER) or not path.is_file():
            continue
        size = path.stat().st_size
        if size > MAX_BYTES:
            large.append(f'{name} ({size / 2**20:.1f} MiB)')
    assert not large, (
        f'git tracks files over {MAX_BYTES // 2**20} MiB outside tests/data/: {large}. '
        'Remove them with `git rm --cached FILE` (and add a .gitignore pattern for '
        'generated files), or move a needed test fixture under tests/data/.')


@pytest.mark.parametrize('name', [
    'onnxruntime_profile__2026-12-02_01-42-38_539.json',
    'tools/onnxruntime_profile__x.json',
    'py_spy-0.4.3-py2.py3-none-manylinux1_x86_64.whl',
    'train.prof',
    'outputs/step.pt.trace.json',
    'b1.pte',
    'docs/retinanet_demo.onnx',
])
def test_profiler_dumps_wheels_and_exports_are_ignored(tracked_files, name):
    """``git check-ignore`` exits 0 for an ignored path (it need not exist)."""
    proc = _git('check-ignore', '--no-index', '-q', name)
    assert proc.returncode == 0, f'{name} is not ignored by .gitignore'


def test_sources_are_not_ignored(tracked_files):
    """The ignore patterns do not catch the project's own files."""
    proc = _git('check-ignore', '--no-index', 'configs/quickstart/_base_/demo_coco.py',
                'tests/data/official_settings.json', 'requirements/runtime.txt')
    assert proc.returncode == 1, f'ignored by .gitignore: {proc.stdout.decode().split()}'
