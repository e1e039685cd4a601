"""Latency helpers: timing loop, statistics, fusing for inference."""
import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmcv')
from mmmobilemamba.analysis.benchmark import (BenchmarkResult, fuse_for_inference,  # noqa: E402
                                              time_model)


def test_time_model_runs_warmup_then_timed_iterations():
    calls = []
    model = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 16, 16)

    def step():
        calls.append(torch.is_grad_enabled())
        return model(x)

    times = time_model(step, torch.device('cpu'), num_iters=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert calls == [False] * 3  # under torch.no_grad


@pytest.mark.parametrize('num_iters, warmup', [(0, 1), (1, -1)])
def test_time_model_rejects_bad_counts(num_iters, warmup):
    with pytest.raises(ValueError):
        time_model(lambda: None, torch.device('cpu'), num_iters=num_iters, warmup=warmup)


def test_result_statistics():
    result = BenchmarkResult([10.0, 20.0, 40.0], device='cpu', shape=(64, 96), warmup=1)
    assert result.median_ms == 20.0
    assert result.mean_ms == pytest.approx(70 / 3)
    assert result.fps == pytest.approx(50.0)
    text = result.summary()
    assert 'median 20.00 ms/img' in text and 'FPS' in text and '64x96' in text


class Deployable(nn.Module):

    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.switched = 0

    def switch_to_deploy(self):
        self.switched += 1
        self.inner.switch_to_deploy()


class Inner(nn.Module):

    def __init__(self):
        super().__init__()
        self.switched = 0

    def switch_to_deploy(self):
        self.switched += 1


def test_fuse_switches_outermost_once_and_fuses_conv_bn():
    model = nn.Sequential(Deployable()).eval()
    done = fuse_for_inference(model)
    assert done == ['0', 'fuse_conv_bn']
    assert model[0].switched == 1 and model[0].inner.switched == 1
    assert isinstance(model[0].bn, nn.Identity)


def test_fuse_switches_a_deployable_model_given_alone_as_a_whole():
    """A MobileMamba exported alone is switched by its own switch_to_deploy (which also fuses
    the stem's activations), as within a detector, not block by block."""
    model = Deployable().eval()
    done = fuse_for_inference(model)
    assert done == ['<root>', 'fuse_conv_bn']
    assert model.switched == 1 and model.inner.switched == 1


class WithFeatures(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def extract_feat(self, x):
        return self.conv(x)


def _recording_compile(monkeypatch):
    """torch.compile replaced by a recorder returning what it was given (no compiling)."""
    calls = []

    def record(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, 'compile', record)
    return calls


def test_compile_features_compiles_extract_feat(monkeypatch):
    from mmmobilemamba.analysis.benchmark import compile_features
    calls = _recording_compile(monkeypatch)
    model = WithFeatures()
    note = compile_features(model, 'max-autotune')
    assert calls == [{'mode': 'max-autotune'}] and 'extract_feat' in model.__dict__
    assert 'max-autotune' in note
    assert model.extract_feat(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match='compile mode'):
        compile_features(WithFeatures(), 'fastest')
    with pytest.raises(TypeError, match='no extract_feat'):
        compile_features(nn.Conv2d(1, 1, 1))


def test_result_reports_the_first_call_apart():
    result = BenchmarkResult([10.0], device='cpu', first_call_ms=45000.0)
    assert 'first call (compiling, not timed above): 45.0 s' in result.summary()
