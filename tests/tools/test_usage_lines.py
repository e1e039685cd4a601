"""Every command-line tool answers ``--help``, and the usage lines users copy name real files.

The usage lines in the tools' docstrings, the configs' comments, the README and the docs name
configs and tools by path; each such path must exist (the paths of data, weights and work
dirs, which a run creates, are not checked).
"""
import re
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted((REPO / 'tools').rglob('*.py'))
# Files whose text users copy commands from.
TEXTS = sorted([*TOOLS, *(REPO / 'tools').rglob('*.sh'), *(REPO / 'configs').rglob('*.py'),
                REPO / 'README.md', *(REPO / 'docs').glob('*.md'), *(REPO / 'scripts').glob('*')])
_REPO_PATH = re.compile(r'(?<![\w/.])((?:configs|tools)/[\w./-]*\w)')


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize('tool', TOOLS, ids=_rel)
def test_tool_answers_help(tool, capsys, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [str(tool), '--help'])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(tool), run_name='__main__')
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith('usage:')


@pytest.mark.parametrize('text', TEXTS, ids=_rel)
def test_paths_named_in_usage_lines_exist(text):
    named = set(_REPO_PATH.findall(text.read_text(encoding='utf-8')))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert missing == []


def test_commands_start_with_our_messages_not_setuptools_noise(tmp_path):
    """mmengine imports pkg_resources, which setuptools >= 80 reports as deprecated at every
    import: a user's first sight of an error must not be that."""
    from tool_configs import run_tool
    proc = run_tool('misc/check_dataset.py',
                    [REPO / 'configs' / 'quickstart' / 'retinanet_mobilemamba_demo-coco.py',
                     '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}/',
                     f'val_dataloader.dataset.data_root={tmp_path}/'])
    assert proc.returncode == 1
    assert 'pkg_resources' not in proc.stdout + proc.stderr
    assert proc.stdout.startswith('[ERROR] train_dataloader.dataset.ann_file')
