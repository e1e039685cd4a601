"""Forward + backward time of the selective scan per backend, on the shapes the model scans."""
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ['available_backends', 'time_scan_backends']


def available_backends(device: torch.device) -> List[str]:
    """The scan backends that run on ``device`` here ('torch' first: the reference of ratios)."""
    from mmmobilemamba.ops.selective_scan import _mamba_ssm_scan, _triton_scan
    backends = ['torch']
    if device.type == 'cuda' and _triton_scan() is not None:
        backends.append('triton')
    if device.type == 'cuda' and _mamba_ssm_scan() is not None:
        backends.append('cuda')
    return backends


def _inputs(batch: int, length: int, channels: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    tensors = dict(
        u=torch.randn(batch, 2 * channels, length, generator=g),
        delta=torch.randn(batch, 2 * channels, length, generator=g),
        A=-torch.rand(2 * channels, 1, generator=g) - 0.05,
        B=torch.randn(batch, 2, 1, length, generator=g),
        C=torch.randn(batch, 2, 1, length, generator=g),
        D=torch.randn(2 * channels, generator=g),
        delta_bias=torch.randn(2 * channels, generator=g) * 0.1)
    return {k: v.to(device).requires_grad_(True) for k, v in tensors.items()}


def time_scan_backends(batch: int, length: int, channels: int, device: str = 'cpu',
                       backends: Optional[Sequence[str]] = None, repeats: int = 10,
                       warmup: int = 3) -> Dict[str, float]:
    """Median ms of one forward + backward of both directions of SS2D's scan per backend.

    The public reference-layout :func:`~mmmobilemamba.ops.selective_scan` (``u, delta`` of
    ``(batch, 2 * channels, length)``, d_state 1, as MobileMamba scans); backends are timed in
    interleaved rounds.

    Args:
        batch (int): images.
        length (int): tokens ``H * W`` of the feature map.
        channels (int): inner channels ``D`` of one direction.
        device (str): 'cpu' or 'cuda[:N]'. Default: 'cpu'.
        backends (Sequence[str], optional): default :func:`available_backends`.
        repeats (int): timed rounds. Default: 10.
        warmup (int): untimed rounds first (Triton compiles here). Default: 3.
    """
    from mmmobilemamba.ops import selective_scan
    torch_device = torch.device(device)
    backends = list(backends or available_backends(torch_device))
    inputs = _inputs(batch, length, channels, torch_device)
    weights = torch.linspace(-1, 1, batch * 2 * channels * length,
                             device=torch_device).view(batch, 2 * channels, length)

    def step(backend: str) -> None:
        for t in inputs.values():
            t.grad = None
        (selective_scan(**inputs, backend=backend) * weights).sum().backward()

    times = {b: [] for b in backends}
    for round_ in range(warmup + repeats):
        for backend in backends:
            if torch_device.type == 'cuda':
                torch.cuda.synchronize(torch_device)
            start = time.perf_counter()
            step(backend)
            if torch_device.type == 'cuda':
                torch.cuda.synchronize(torch_device)
            if round_ >= warmup:
                times[backend].append((time.perf_counter() - start) * 1000)
    return {b: statistics.median(t) for b, t in times.items()}
