"""onnxruntime's node timings of an ONNX file, read from its own profiler (the real runtime),
by operator type, including the scan kernel's custom op; and the tool that prints them."""
import sys
from pathlib import Path

import pytest
import torch
from tool_modules import load_tool

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')
from mmmobilemamba.analysis.executorch_profile import format_profile  # noqa: E402
from mmmobilemamba.analysis.onnxruntime_profile import profile_onnxruntime  # noqa: E402
from mmmobilemamba.deploy import export_network  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'deploy'))
from deploy_checks import randomise_norms  # noqa: E402


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A T2 backbone's file with the scan kernel, and how many scans it has."""
    from mmmobilemamba.models import MobileMamba
    from mmmobilemamba.models.layers.ss2d import SS2D
    backbone = randomise_norms(MobileMamba('t2', out_indices=(0, 1)))
    out = tmp_path_factory.mktemp('profile') / 't2.onnx'
    export_network(backbone, 'backbone', torch.randn(1, 3, 64, 64), str(out),
                   runtime='onnxruntime', runtime_options=dict(scan_kernel=True))
    return out, sum(isinstance(m, SS2D) for m in backbone.modules())


def test_profile_sums_node_times_by_type(exported):
    onnx_file, scans = exported
    profile = profile_onnxruntime(str(onnx_file), torch.randn(1, 3, 64, 64), runs=3,
                                  threads=2)
    total, kinds = profile[0], {p.kind: p for p in profile[1:]}
    assert total.kind == 'total' and total.ms > 0
    assert 'Conv' in kinds and kinds['SS2DScan'].count == scans
    assert all(p.count >= 1 and p.ms >= 0 for p in kinds.values())
    # the nodes run inside the run: together no longer than it (two threads: no overlap of
    # nodes, onnxruntime runs them one after the other)
    assert sum(p.ms for p in kinds.values()) <= total.ms * 1.05
    table = format_profile(profile, whole='onnxruntime run', column='operator (onnxruntime)')
    assert table.startswith('onnxruntime run:') and '| SS2DScan |' in table
    with pytest.raises(ValueError, match='runs'):
        profile_onnxruntime(str(onnx_file), torch.randn(1, 3, 64, 64), runs=0)


def test_tool_profiles_a_file_and_refuses_a_pte(exported, tmp_path, capsys):
    onnx_file = exported[0]
    tool = load_tool('analysis/profile_onnxruntime.py')
    assert tool.main([str(onnx_file), '--runs', '2']) == 0
    out = capsys.readouterr().out
    assert 'input (1, 3, 64, 64)' in out and 'onnxruntime run:' in out
    without_record = tmp_path / 'copy.onnx'
    without_record.write_bytes(onnx_file.read_bytes())
    assert tool.main([str(without_record), '--runs', '1']) == 2
    assert '--shape' in capsys.readouterr().err
    assert tool.main([str(without_record), '--runs', '1', '--shape', '64', '64']) == 0
    assert 'SS2DScan' in capsys.readouterr().out
    pte_record = tmp_path / 'other.json'
    pte_record.write_text('{"runtime": "executorch", "input_shape": [1, 3, 64, 64]}')
    (tmp_path / 'other.onnx').write_bytes(onnx_file.read_bytes())
    assert tool.main([str(tmp_path / 'other.onnx')]) == 2
    assert 'not onnxruntime' in capsys.readouterr().err
