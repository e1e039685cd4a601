"""tools/analysis/benchmark_deploy.py: the table, its ratios, the chart, the export cache.

Only onnxruntime and PyTorch columns here (ExecuTorch's lowering takes longer than a default
test should); the ExecuTorch sessions and exports it uses are tested in tests/deploy.
"""
import sys
from pathlib import Path

import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('mmdet')
from mmmobilemamba.analysis.deploy_benchmark import Row, draw_chart, format_tables  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'tools'))
from tool_configs import run_tool  # noqa: E402


def _rows():
    columns = ('pytorch', 'executorch-fp32')
    b1 = Row('b1', (224, 224), 'backbones 224x224',
             {(c, t): 30.0 / t for c in columns for t in (1, 2)})
    regnet = Row('regnetx_800mf', (224, 224), 'backbones 224x224',
                 {(c, t): 20.0 / t for c in columns for t in (1, 2)})
    regnet.ms[('executorch-fp32', 2)] = 5.0
    return [b1, regnet], columns


def test_tables_give_ratios_to_regnet_in_the_same_runtime_and_threads():
    rows, columns = _rows()
    text = format_tables(rows, columns, (1, 2), rounds=5)
    assert '| MobileMamba-B1 224x224 | 30.0 | 30.0 | 15.0 | 15.0 |' in text
    assert '| MobileMamba-B1 224x224 | 1.50x | 1.50x | 1.50x | 3.00x |' in text
    assert 'median of 5 interleaved rounds' in text


def test_chart_is_a_small_png(tmp_path):
    rows, columns = _rows()
    draw_chart(rows, columns, (1, 2), str(tmp_path / 'chart.png'), 'title')
    data = (tmp_path / 'chart.png').read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) < 200_000


@pytest.mark.slow
def test_tool_times_exports_and_reuses_them(tmp_path):
    args = ['--models', 'mobilenetv2', 'regnetx_800mf', '--sizes', '32', '--runtimes',
            'pytorch', 'onnxruntime-fp32', '--threads', '1', '--rounds', '1', '--warmup', '0',
            '--work-dir', tmp_path / 'cache', '--markdown', tmp_path / 'table.md',
            '--chart', tmp_path / 'chart.png']
    first = run_tool('analysis/benchmark_deploy.py', args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 'exporting mobilenetv2_32x32_onnxruntime' in first.stderr
    assert '| MobileNetV2 32x32 |' in first.stdout and '| RegNetX-800MF 32x32 |' in first.stdout
    assert 'Against RegNetX-800MF' in first.stdout
    assert (tmp_path / 'chart.png').stat().st_size > 0
    assert (tmp_path / 'table.md').read_text().startswith('Command: `python ')
    second = run_tool('analysis/benchmark_deploy.py', args)
    assert second.returncode == 0 and 'exporting' not in second.stderr


def test_tool_refuses_an_unknown_model(tmp_path):
    proc = run_tool('analysis/benchmark_deploy.py', ['--models', 'resnet1000'])
    assert proc.returncode == 2 and 'resnet1000' in proc.stderr


def test_export_cache_key_ignores_comments_and_docstrings():
    from mmmobilemamba.analysis.deploy_benchmark import _code_of
    assert _code_of('"""doc"""\nx = 1  # why\n') == _code_of('x = 1\n')
    assert _code_of('def f():\n    """what"""\n    return 1\n') == _code_of('def f():\n    return 1\n')
    assert _code_of('x = 1\n') != _code_of('x = 2\n')


def test_export_table_counts_scan_kernel_calls_apart_from_portable_nodes():
    from mmmobilemamba.analysis.deploy_benchmark import (COLUMN_OPTIONS, RUNTIME_COLUMNS,
                                                         _export_cell)
    assert set(COLUMN_OPTIONS) <= set(RUNTIME_COLUMNS)
    assert RUNTIME_COLUMNS['executorch-kernel-fp32'] == ('executorch', 'fp32')
    delegation = dict(share=0.994, portable_nodes=0, kernel_nodes=7)
    cell = _export_cell(dict(file_bytes=63 * 2**20, delegation=delegation))
    assert cell == '63.0; 99% (0) + 7 scan kernel calls'
    delegation.update(kernel_nodes=0, share=1.0)
    assert _export_cell(dict(file_bytes=2**20, delegation=delegation)) == '1.0; 100% (0)'


def test_benchmark_models_have_every_residual_branch_connected():
    """MobileMamba zero-initialises the last norm of each residual branch: with random weights
    as built, no mixer (and no scan) would reach the output, and the exports' differences and
    int8 SNRs would say nothing about them. The benchmark's models have none left at zero,
    and their mixers change the output."""
    import torch

    from mmmobilemamba.analysis.deploy_benchmark import _build, connect_zero_initialised_norms
    from mmmobilemamba.analysis.backbones import build_backbone
    assert any(name.endswith('mixer.proj.bn')
               for name in connect_zero_initialised_norms(build_backbone('t2')))
    model, kind, x, _, eager = _build('t2', (64, 64), 2)
    norms = [m for m in model.modules()
             if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm))]
    assert norms and all(m.weight.any() for m in norms)
    with torch.no_grad():
        out = eager(x)
        mixers = [m for m in eager.modules() if type(m).__name__ == 'SS2D']
        for mixer in mixers:  # without the scans' skip terms
            mixer.Ds.zero_()
        assert mixers and not torch.allclose(eager(x)[-1], out[-1])


def test_export_cache_key_covers_the_benchmarks_own_model_building(monkeypatch):
    """The benchmark's weights and norm statistics are in every cached file: a change to how it
    builds its models re-exports them; a change to its tables or chart does not."""
    from mmmobilemamba.analysis import deploy_benchmark
    before = deploy_benchmark.source_key()
    code_of = deploy_benchmark._code_of

    def changed(marker):
        monkeypatch.setattr(deploy_benchmark, '_code_of', lambda source: code_of(source) + (
            'changed' if marker in source else ''))
        return deploy_benchmark.source_key()

    assert changed('def connect_zero_initialised_norms') != before
    assert changed('def build_backbone') != before   # analysis/backbones.py
    assert changed('def chart_figure') == before


@pytest.mark.parametrize('count', [1, 5, 9])
def test_chart_legend_fits_the_figure_with_every_runtime(count):
    """All nine runtime columns (the scan kernel's included) are named inside the figure."""
    import matplotlib.pyplot as plt

    from mmmobilemamba.analysis.deploy_benchmark import RUNTIME_COLUMNS, chart_figure
    columns = list(RUNTIME_COLUMNS)[:count]
    rows = [Row(model, (224, 224), 'backbones 224x224',
                {(c, t): 10.0 + i for i, c in enumerate(columns) for t in (1, 2)})
            for model in ('b1', 'regnetx_800mf')]
    fig = chart_figure(rows, columns, (1, 2), 'title')
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1, (legend, fig.bbox)
    assert fig.bbox.y0 <= legend.y0, (legend, fig.bbox)
    panels = [axis.get_tightbbox(renderer) for axis in fig.axes]
    assert all(legend.y1 <= panel.y0 + 1 for panel in panels), (legend, panels)
    plt.close(fig)
