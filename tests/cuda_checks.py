"""Shared by the tests of the CUDA paths: their marks, the device, the comparisons.

A module of CUDA tests sets ``pytestmark = CUDA_ONLY`` (the ``cuda`` marker and a skip without
a GPU) and moves what it runs there with :func:`on_device`. While a test marked ``cuda`` runs,
tests/conftest.py turns TF32 off in cuBLAS and cuDNN, so that float32 results on the GPU
compare with the CPU's at 1e-4 (:func:`assert_close_rel`).
"""
import copy
from typing import Dict, Sequence

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

CUDA_ONLY = [pytest.mark.cuda,
             pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]
DEVICE = torch.device('cuda')


def _mmcv_has_cuda_ops() -> bool:
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError:
        return False
    return get_compiling_cuda_version() != 'not available'


# e.g. mmdet's FocalLoss (RetinaNet) calls mmcv's CUDA op on GPU tensors (asked only where
# there is a GPU: without one, CUDA_ONLY skips)
needs_mmcv_cuda_ops = pytest.mark.skipif(
    torch.cuda.is_available() and not _mmcv_has_cuda_ops(),
    reason='needs mmcv built with its CUDA ops (FORCE_CUDA=1)')


def on_device(obj, dtype: torch.dtype = None):
    """A copy of a module (or a tensor) on :data:`DEVICE`, in ``dtype`` if given."""
    if isinstance(obj, nn.Module):
        obj = copy.deepcopy(obj)
    return obj.to(DEVICE) if dtype is None else obj.to(DEVICE, dtype)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affines, learned scales and SSM parameters, as after training:
    no branch is the identity that zero-initialised norms make of it, and each channel of a
    scan decays at its own rate. Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if hasattr(m, 'ssm_scale'):  # WTE-Mamba
                m.ssm_scale.copy_(torch.rand(m.ssm_scale.shape, generator=g) + 0.5)
                m.wavelet_scale.copy_(torch.rand(m.wavelet_scale.shape, generator=g) * 0.2)
            if hasattr(m, 'A_logs'):  # SS2D: A = -exp(A_logs) from -0.4 to -4.5
                m.A_logs.copy_(torch.rand(m.A_logs.shape, generator=g) * 2.5 - 1.0)
                m.Ds.copy_(torch.rand(m.Ds.shape, generator=g) + 0.5)
    return model


def weighted_sum(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A scalar of the outputs whose gradient differs at every element (not a plain sum)."""
    return sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
               for o in outputs)


def forward_backward(model: nn.Module, *inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Outputs, input gradients and parameter gradients of one forward/backward, on the CPU.

    ``model`` returns a tensor or a tuple of them; keys: ``out.<i>``, ``input.<i>.grad`` and
    the parameter names (those that got a gradient).
    """
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    model.zero_grad(set_to_none=True)
    outs = model(*leaves)
    outs = (outs,) if torch.is_tensor(outs) else tuple(outs)
    weighted_sum(outs).backward()
    result = {f'out.{i}': o.detach() for i, o in enumerate(outs)}
    result.update({f'input.{i}.grad': x.grad for i, x in enumerate(leaves)})
    result.update({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    # copies (also on the CPU) in the memory format of the originals
    return {k: v.cpu().clone() for k, v in result.items()}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4,
                     name: str = '') -> None:
    """``actual`` equals ``expected`` to ``rel`` of the largest magnitude of ``expected``
    (elementwise ``rtol=rel``, ``atol=rel * max|expected|``), compared in float32 on the CPU."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    atol = rel * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=atol,
                               msg=lambda text: f'{name}: {text}' if name else text)


def assert_all_close_rel(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
                         rel: float = 1e-4) -> None:
    """:func:`assert_close_rel` for every entry; both hold the same keys."""
    assert actual.keys() == expected.keys(), set(actual) ^ set(expected)
    for key, value in expected.items():
        assert_close_rel(actual[key], value, rel, key)
