"""ExecuTorch's kernel of SS2D's scan (mmmobilemamba/deploy/csrc/ss2d_scan.cpp), built with the
C++ compiler against the installed executorch and run in ExecuTorch's own runtime, against a
float64 sequential scan: both directions, one or several states, lengths across its tiles,
channel counts that leave lanes empty, and step sizes where softplus and exp reach their ends.
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip('executorch.exir')
from mmmobilemamba.deploy import (ScanKernelError, build_scan_kernel,  # noqa: E402
                                  export_network, read_record)
from mmmobilemamba.deploy import scan_kernel  # noqa: E402
from mmmobilemamba.models.layers.ss2d import GraphScan  # noqa: E402
from mmmobilemamba.ops import ss2d_scan_graph_op  # noqa: E402
from mmmobilemamba.ops.scan_chunked import ss2d_scan_graph  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_checks import (SCAN_CASES, randomise_norms, scan_inputs,  # noqa: E402
                           sequential_scan)


class _Scan(nn.Module):
    def __init__(self, A, skip):
        super().__init__()
        self.scan = GraphScan(A, skip, one_operator=True)

    def forward(self, u, delta, B, C):
        return self.scan(u, delta, B, C)


def _run_in_executorch(module, inputs):
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime
    program = to_edge_transform_and_lower(torch.export.export(module, inputs, strict=False))
    data = program.to_executorch().buffer
    assert scan_kernel.load_scan_kernel_if_called(data)
    method = Runtime.get().load_program(data).load_method('forward')
    return method.execute(inputs)[0]


@pytest.mark.parametrize('batch,directions,channels,length,states,delta_scale', SCAN_CASES)
def test_kernel_equals_the_sequential_scan(batch, directions, channels, length, states,
                                           delta_scale):
    u, delta, A, B, C, skip = scan_inputs(batch, directions, channels, length, states,
                                      delta_scale)
    got = _run_in_executorch(_Scan(A, skip).eval(), (u, delta, B, C))
    expected = sequential_scan(u, delta, A, B, C, skip)
    assert got.shape == (batch, channels, length) and got.dtype == torch.float32
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, error


def test_operator_computes_the_graph_form_and_exports_as_one_node():
    u, delta, A, B, C, skip = scan_inputs(1, 2, 6, 50, 1)
    torch.testing.assert_close(ss2d_scan_graph_op(u, delta, A, B, C, skip),
                               ss2d_scan_graph(u, delta, A, B, C, skip))
    graph = torch.export.export(_Scan(A, skip).eval(), (u, delta, B, C), strict=False).graph
    ops = [n.target for n in graph.nodes if n.op == 'call_function']
    assert ops == [torch.ops.mmmobilemamba.ss2d_scan_graph.default]


def test_backbone_exported_with_the_kernel_runs_it_and_matches_pytorch(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('t2', out_indices=(0, 1)))
    x = torch.randn(1, 3, 64, 96)
    result = export_network(backbone, 'backbone', x, str(tmp_path / 't2.pte'),
                            runtime='executorch', verify=True,
                            runtime_options=dict(scan_kernel=True))
    assert result.max_rel_diff <= 1e-4
    from mmmobilemamba.models.layers.ss2d import SS2D
    scans = sum(isinstance(m, SS2D) for m in backbone.modules())
    assert scans and result.rewrites['GraphScan.one_operator'] == scans
    delegation = read_record(result.file)['delegation']
    # every scan is one kernel call, everything else runs in XNNPACK
    assert delegation['kernel_ops'] == {'mmmobilemamba.ss2d_scan_graph': scans}
    assert delegation['portable_nodes'] == 0
    assert result.kernels == [dict(operator='mmmobilemamba::ss2d_scan_graph.out',
                                   source='mmmobilemamba/deploy/csrc/ss2d_scan.cpp')]
    # a session finds the kernel's operator in the file as it does in the bytes
    assert scan_kernel.program_calls_scan_kernel(result.file)
    empty = tmp_path / 'empty.pte'
    empty.write_bytes(b'')
    assert not scan_kernel.program_calls_scan_kernel(str(empty))


def test_missing_compiler_is_named_with_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv('MMM_CACHE', str(tmp_path))
    monkeypatch.setenv('CXX', 'no-such-compiler')
    monkeypatch.setattr(scan_kernel.shutil, 'which', lambda name: None)
    with pytest.raises(ScanKernelError, match='C\\+\\+17 compiler.*without --scan-kernel'):
        build_scan_kernel()
    assert not list(tmp_path.iterdir())


def test_compiler_errors_are_reported_and_leave_no_library(monkeypatch, tmp_path):
    bad = tmp_path / 'broken.cpp'
    bad.write_text('this is not C++\n')
    monkeypatch.setenv('MMM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(scan_kernel, 'SOURCE', str(bad))
    with pytest.raises(ScanKernelError, match='building the scan kernel for executorch failed'):
        build_scan_kernel()
    assert not list((tmp_path / 'cache' / 'kernels').iterdir())


def test_build_is_cached_per_source(monkeypatch, tmp_path):
    monkeypatch.setenv('MMM_CACHE', str(tmp_path))
    first = build_scan_kernel()
    stamp = Path(first).stat().st_mtime_ns
    assert build_scan_kernel() == first and Path(first).stat().st_mtime_ns == stamp
    edited = tmp_path / 'edited.cpp'
    edited.write_text(Path(scan_kernel.SOURCE).read_text() + '\n// edited\n')
    monkeypatch.setattr(scan_kernel, 'SOURCE', str(edited))
    assert build_scan_kernel() != first


def test_kernel_refuses_a_state_size_it_does_not_take():
    u, delta, A, B, C, skip = scan_inputs(1, 2, 4, 10, 17)  # d_state 17: over the kernel's 16
    with pytest.raises(RuntimeError):
        _run_in_executorch(_Scan(A, skip).eval(), (u, delta, B, C))


@pytest.mark.slow
def test_int8_export_runs_the_scan_in_the_kernel(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('t2', out_indices=(0, 1)))
    x = torch.randn(1, 3, 64, 96)
    calibration = [torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(i))
                   for i in range(4)]
    result = export_network(backbone, 'backbone', x, str(tmp_path / 't2_int8.pte'),
                            runtime='executorch', verify=True, quantize='int8',
                            calibration=calibration, runtime_options=dict(scan_kernel=True))
    assert result.snr_db > 20
    assert result.delegation['kernel_nodes'] == result.rewrites['GraphScan.one_operator'] > 0
    assert result.delegation['portable_nodes'] == 0


@pytest.mark.slow
def test_b1_with_the_kernel_matches_pytorch_at_224(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('b1'))
    result = export_network(backbone, 'backbone', torch.randn(1, 3, 224, 224),
                            str(tmp_path / 'b1.pte'), runtime='executorch', verify=True,
                            runtime_options=dict(scan_kernel=True))
    assert result.max_rel_diff <= 1e-4
    assert result.delegation['kernel_ops'] == {'mmmobilemamba.ss2d_scan_graph': 7}
    assert result.delegation['portable_nodes'] == 0
