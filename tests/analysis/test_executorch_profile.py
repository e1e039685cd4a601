"""XNNPACK's operator timings of an ExecuTorch program, read from ExecuTorch's event tracer
(the real runtime), and the tool that prints them."""
import pytest
import torch
from tool_modules import load_tool

pytest.importorskip('executorch.devtools')
from mmmobilemamba.analysis.executorch_profile import (format_profile,  # noqa: E402
                                                       profile_executorch)
from mmmobilemamba.deploy import export_executorch, export_onnx  # noqa: E402


class TwoConvs(torch.nn.Module):
    """A 3x3 conv (XNNPACK: an IGEMM convolution) and a 1x1 conv (a fully connected op)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.point = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return (self.point(torch.relu(self.conv(x))), )


@pytest.fixture(scope='module')
def program(tmp_path_factory):
    out = tmp_path_factory.mktemp('profile') / 'two_convs.pte'
    export_executorch(TwoConvs().eval(), 'backbone', torch.randn(1, 3, 32, 32), str(out))
    return out


def test_profile_names_xnnpack_operators_by_kind(program):
    profile = profile_executorch(str(program), torch.randn(1, 3, 32, 32), runs=3)
    total, kinds = profile[0], {p.kind: p for p in profile[1:]}
    assert total.kind == 'total' and total.ms > 0
    assert any(k.startswith('Convolution') for k in kinds), kinds
    assert all(p.count >= 1 and p.ms >= 0 for p in kinds.values())
    # the kinds are the delegate's operators: together no longer than the call holding them
    assert sum(p.ms for p in kinds.values()) <= total.ms * 1.05
    table = format_profile(profile)
    assert table.startswith('XNNPACK delegate:') and '| operator (XNNPACK) |' in table


def test_profile_refuses_no_runs(program):
    with pytest.raises(ValueError, match='runs'):
        profile_executorch(str(program), torch.randn(1, 3, 32, 32), runs=0)


def test_tool_profiles_a_file_and_refuses_an_onnx_one(program, tmp_path, capsys):
    tool = load_tool('analysis/profile_executorch.py')
    assert tool.main([str(program), '--runs', '2']) == 0
    out = capsys.readouterr().out
    assert 'input (1, 3, 32, 32)' in out and 'XNNPACK delegate:' in out
    without_record = tmp_path / 'copy.pte'
    without_record.write_bytes(program.read_bytes())
    assert tool.main([str(without_record), '--runs', '1']) == 2
    assert '--shape' in capsys.readouterr().err
    assert tool.main([str(without_record), '--runs', '1', '--shape', '32', '32']) == 0
    assert 'input (1, 3, 32, 32)' in capsys.readouterr().out
    onnx_file = tmp_path / 'two_convs.onnx'
    export_onnx(TwoConvs().eval(), 'backbone', torch.randn(1, 3, 32, 32), str(onnx_file))
    assert tool.main([str(onnx_file)]) == 2
    assert 'not ExecuTorch' in capsys.readouterr().err
