"""tools/analysis/benchmark_backbone.py: one run timing MobileMamba against mmdet backbones."""
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip('mmdet')

SCRIPT = Path(__file__).resolve().parents[2] / 'tools' / 'analysis' / 'benchmark_backbone.py'


@pytest.mark.parametrize('channels_last', [False, True])
def test_prints_and_writes_the_ratio_table(tmp_path, capsys, channels_last):
    out_md = tmp_path / 'table.md'
    argv = sys.argv
    sys.argv = [str(SCRIPT), '--archs', 't2', '--sizes', '64', '96', '--repeats', '1',
                '--warmup', '0', '--markdown', str(out_md)] + (['--channels-last'] if channels_last else [])
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(SCRIPT), run_name='__main__')
    finally:
        sys.argv = argv
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| ')]
    names = [row.split('|')[1].strip() for row in rows[1:]]
    assert names == ['MobileMamba-T2', 'RegNetX-800MF', 'ResNet-18', 'ResNet-50', 'MobileNetV2']
    assert '| RegNetX-800MF |' in out and '1.00x' in out  # the reference is 1.00x of itself
    assert 'MobileMamba-T2: 64->96 time x' in out
    assert ('channels-last input' if channels_last else 'NCHW input') in out
    assert out_md.read_text().startswith('Command: `python ')
