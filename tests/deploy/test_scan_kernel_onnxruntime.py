"""onnxruntime's kernel of SS2D's scan (mmmobilemamba/deploy/csrc/ss2d_scan_onnxruntime.cpp): a
custom-op library built with the C++ compiler and registered in onnxruntime's own sessions,
against a float64 sequential scan (the cases the ExecuTorch kernel is checked on), on one and
two threads; exported backbones (float32 and int8) with one node per scan; what the library
refuses; and the build (cached per source, errors reported).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
from mmmobilemamba.deploy import (ScanKernelError, build_scan_kernel,  # noqa: E402
                                  export_network, read_record)
from mmmobilemamba.deploy import scan_kernel  # noqa: E402
from mmmobilemamba.deploy.onnx import OnnxRuntimeSession  # noqa: E402
from mmmobilemamba.models.layers.ss2d import SS2D  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_checks import (SCAN_CASES, randomise_norms, scan_inputs,  # noqa: E402
                           sequential_scan)

NAMES = ('u', 'delta', 'A', 'B', 'C', 'skip')


def _scan_model(operands) -> bytes:
    """An ONNX model of one scan node, its operands the graph's inputs."""
    from onnx import TensorProto, helper
    node = helper.make_node(scan_kernel.ONNX_OPERATOR, list(NAMES), ['y'],
                            domain=scan_kernel.ONNX_DOMAIN)
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.shape))
              for name, t in zip(NAMES, operands)]
    output = helper.make_tensor_value_info('y', TensorProto.FLOAT, None)
    graph = helper.make_graph([node], 'scan', inputs, [output])
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid('', 18), helper.make_opsetid(scan_kernel.ONNX_DOMAIN, 1)
    ]).SerializeToString()


def _run(operands, threads=1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(build_scan_kernel('onnxruntime'))
    session = ort.InferenceSession(_scan_model(operands), options,
                                   providers=['CPUExecutionProvider'])
    return session.run(None, {n: t.numpy() for n, t in zip(NAMES, operands)})[0]


@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('batch,directions,channels,length,states,delta_scale', SCAN_CASES)
def test_kernel_equals_the_sequential_scan(batch, directions, channels, length, states,
                                           delta_scale, threads):
    operands = scan_inputs(batch, directions, channels, length, states, delta_scale)
    got = torch.from_numpy(_run(operands, threads))
    expected = sequential_scan(*operands)
    assert got.shape == (batch, channels, length) and got.dtype == torch.float32
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, error


def test_kernel_refuses_what_it_does_not_take_by_name():
    operands = scan_inputs(1, 2, 4, 10, 17)  # d_state 17: over the kernel's 16
    with pytest.raises(Exception, match='SS2DScan: d_state must be 1 to 16'):
        _run(operands)
    u, delta, A, B, C, skip = scan_inputs(1, 2, 4, 10, 1)
    with pytest.raises(Exception, match='SS2DScan: shapes do not agree'):
        _run((u, delta, A, B[..., :9], C[..., :9], skip))  # B and C shorter than L
    with pytest.raises(Exception, match='SS2DScan: expected u'):
        _run((u[0], delta, A, B, C, skip))


def test_backbone_exported_with_the_kernel_has_one_node_per_scan(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('t2', out_indices=(0, 1)))
    x = torch.randn(1, 3, 64, 96)
    result = export_network(backbone, 'backbone', x, str(tmp_path / 't2.onnx'),
                            runtime='onnxruntime', verify=True,
                            runtime_options=dict(scan_kernel=True))
    assert result.max_rel_diff <= 1e-4
    scans = sum(isinstance(m, SS2D) for m in backbone.modules())
    assert scans and result.rewrites == {'GraphScan.one_operator': scans}
    model = onnx.load(result.file)
    scan_nodes = [n for n in model.graph.node if n.domain == scan_kernel.ONNX_DOMAIN]
    assert len(scan_nodes) == scans
    assert {n.op_type for n in scan_nodes} == {scan_kernel.ONNX_OPERATOR}
    assert read_record(result.file)['kernels'] == [dict(
        operator='mmmobilemamba.SS2DScan',
        source='mmmobilemamba/deploy/csrc/ss2d_scan_onnxruntime.cpp')]
    # a session registers the library for the file (path or bytes), on any thread count
    reference = OnnxRuntimeSession(Path(result.file).read_bytes(), threads=1).run(x)
    for threads in (1, 2):
        outputs = OnnxRuntimeSession(result.file, threads=threads).run(x)
        for got, expected in zip(outputs, reference):
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
    empty = tmp_path / 'empty.onnx'
    empty.write_bytes(b'')
    assert not scan_kernel.onnx_calls_scan_kernel(str(empty))
    # the plain export has no such node and needs no library
    plain = export_network(backbone, 'backbone', x, str(tmp_path / 'plain.onnx'),
                           runtime='onnxruntime')
    assert not scan_kernel.onnx_calls_scan_kernel(plain.file) and plain.kernels is None


def test_int8_export_with_the_kernel_calibrates_through_it(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('t2', out_indices=(0, 1)))
    x = torch.randn(1, 3, 64, 64)
    calibration = [torch.randn(1, 3, 64, 64) for _ in range(2)]
    result = export_network(backbone, 'backbone', x, str(tmp_path / 't2_int8.onnx'),
                            runtime='onnxruntime', verify=True, quantize='int8',
                            calibration=calibration, latency_rounds=1,
                            runtime_options=dict(scan_kernel=True))
    model = onnx.load(result.file)
    ops = {n.op_type for n in model.graph.node}
    assert scan_kernel.ONNX_OPERATOR in ops and 'QuantizeLinear' in ops
    assert result.kernels and result.snr_db > 20, result.snr_db


def test_export_tools_offer_the_scan_kernel():
    from mmmobilemamba.deploy.cli import build_parser
    for runtime, suffix in (('onnxruntime', '.onnx'), ('executorch', '.pte')):
        args = build_parser(runtime, 'x', suffix).parse_args(
            ['config.py', '--out', f'b1{suffix}', '--scan-kernel'])
        assert args.scan_kernel
        assert not build_parser(runtime, 'x', suffix).parse_args(
            ['config.py', '--out', f'b1{suffix}']).scan_kernel


def test_build_is_cached_per_source_and_core(monkeypatch, tmp_path):
    monkeypatch.setenv('MMM_CACHE', str(tmp_path))
    first = build_scan_kernel('onnxruntime')
    stamp = Path(first).stat().st_mtime_ns
    assert build_scan_kernel('onnxruntime') == first
    assert Path(first).stat().st_mtime_ns == stamp
    seen = {first}
    for attribute in ('ONNXRUNTIME_SOURCE', 'CORE'):
        original = Path(getattr(scan_kernel, attribute))
        edited = tmp_path / original.name  # the same name: includes still resolve
        edited.write_text(original.read_text() + '\n// edited\n')
        monkeypatch.setattr(scan_kernel, attribute, str(edited))
        path = build_scan_kernel('onnxruntime')
        assert path not in seen
        seen.add(path)


def test_compiler_errors_and_unknown_runtimes_are_reported(monkeypatch, tmp_path):
    bad = tmp_path / 'broken.cpp'
    bad.write_text('this is not C++\n')
    monkeypatch.setenv('MMM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(scan_kernel, 'ONNXRUNTIME_SOURCE', str(bad))
    with pytest.raises(ScanKernelError,
                       match='(?s)for onnxruntime failed.*without --scan-kernel'):
        build_scan_kernel('onnxruntime')
    assert not list((tmp_path / 'cache' / 'kernels').iterdir())
    with pytest.raises(ValueError, match='no scan kernel for'):
        build_scan_kernel('tflite')


@pytest.mark.slow
def test_b1_with_the_kernel_matches_pytorch_at_224(tmp_path):
    from mmmobilemamba.models import MobileMamba
    backbone = randomise_norms(MobileMamba('b1'))
    result = export_network(backbone, 'backbone', torch.randn(1, 3, 224, 224),
                            str(tmp_path / 'b1.onnx'), runtime='onnxruntime', verify=True,
                            runtime_options=dict(scan_kernel=True))
    assert result.max_rel_diff <= 1e-4
    nodes = onnx.load(result.file).graph.node
    assert sum(n.op_type == scan_kernel.ONNX_OPERATOR for n in nodes) == 7  # B1's 7 SS2Ds
