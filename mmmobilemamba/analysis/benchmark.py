"""Inference latency and FPS of a whole detector/segmentor, one image at a time.

Each timed iteration is ``model.test_step(batch)``: the data preprocessor, backbone, neck,
head and post-processing (NMS, resizing masks or logits back), in eval mode under
``torch.no_grad``; on CUDA the device is synchronised before the clock is read. Images are
synthetic (see :mod:`mmmobilemamba.datasets.dummy_batch`), so no data set is needed.
"""
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from mmmobilemamba.models.fuse import fuse_for_inference

__all__ = ['BenchmarkResult', 'time_model', 'fuse_for_inference', 'compile_features',
           'config_benchmark', 'publish_report', 'COMPILE_MODES']

# torch.compile's modes
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


@dataclass
class BenchmarkResult:
    """Timings of :func:`time_model`.

    Args:
        times_ms (list[float]): milliseconds of each timed iteration (one image each).
        device (str): the device the model ran on.
        shape (tuple[int, int], optional): image ``(H, W)`` fed to the model.
        warmup (int): untimed iterations run before.
        mode (str): what was timed: 'predict' (the full ``test_step``) or 'tensor'.
        notes (list[str]): extra lines for the summary (e.g. what was fused).
        first_call_ms (float, optional): the first call of a compiled model (compiling),
            not among ``times_ms``.
    """

    times_ms: List[float]
    device: str
    shape: Optional[Tuple[int, int]] = None
    warmup: int = 0
    mode: str = 'predict'
    notes: List[str] = field(default_factory=list)
    first_call_ms: Optional[float] = None

    @property
    def median_ms(self) -> float:
        """Median latency per image in milliseconds."""
        return statistics.median(self.times_ms)

    @property
    def mean_ms(self) -> float:
        """Mean latency per image in milliseconds."""
        return statistics.fmean(self.times_ms)

    @property
    def fps(self) -> float:
        """Images per second, from the median latency (robust to stray slow iterations)."""
        return 1000.0 / self.median_ms

    def summary(self) -> str:
        """One block of text with the settings and the results."""
        shape = f'{self.shape[0]}x{self.shape[1]}' if self.shape else '?'
        lines = [f'device {self.device}, image {shape} (HxW), batch 1, mode {self.mode}, '
                 f'{self.warmup} warm-up + {len(self.times_ms)} timed iterations',
                 f'median {self.median_ms:.2f} ms/img, mean {self.mean_ms:.2f} ms/img, '
                 f'min {min(self.times_ms):.2f}, max {max(self.times_ms):.2f}',
                 f'FPS (from the median): {self.fps:.2f}']
        if self.first_call_ms is not None:
            lines.append(f'first call (compiling, not timed above): '
                         f'{self.first_call_ms / 1000:.1f} s')
        return '\n'.join(lines + self.notes)


def publish_report(text: str, markdown: Optional[str] = None) -> None:
    """Print a benchmark tool's ``text``; with ``markdown``, also write it there after the
    command line that produced it (``sys.argv``), so the figures can be rerun."""
    print(text)
    if markdown:
        with open(markdown, 'w') as f:
            f.write(f'Command: `python {" ".join(sys.argv)}`\n\n{text}')


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_model(step: Callable[[], object], device: torch.device, num_iters: int = 50,
               warmup: int = 5) -> List[float]:
    """Milliseconds of each of ``num_iters`` calls of ``step``, after ``warmup`` calls.

    Args:
        step (callable): runs one inference (no arguments).
        device (torch.device): device to synchronise on before reading the clock.
        num_iters (int): timed iterations. Default: 50.
        warmup (int): untimed iterations first (allocator, cuDNN autotuning). Default: 5.

    Returns:
        list[float]: one duration per timed iteration.
    """
    if num_iters < 1 or warmup < 0:
        raise ValueError(f'need num_iters >= 1 and warmup >= 0, got {num_iters}, {warmup}')
    with torch.no_grad():
        for _ in range(warmup):
            step()
        times = []
        for _ in range(num_iters):
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return times


def compile_features(model: nn.Module, mode: str = 'default') -> str:
    """``torch.compile`` the backbone and neck of a detector/segmentor, in place.

    What is compiled is the model's ``extract_feat`` (backbone + neck in mmdet and mmseg), so
    pre- and post-processing (NMS, resizing) stay eager. Compiling happens at the first call.

    Args:
        model (nn.Module): an mmdet detector or mmseg segmentor.
        mode (str): one of :data:`COMPILE_MODES`. Default: 'default'.

    Returns:
        str: a note for the report.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f'compile mode {mode!r}: choose from {COMPILE_MODES}')
    if not callable(getattr(model, 'extract_feat', None)):
        raise TypeError(f'{type(model).__name__} has no extract_feat to compile')
    # an instance attribute shadows the method: predict/loss/_forward all call it
    model.extract_feat = torch.compile(model.extract_feat, mode=mode)
    return f'torch.compile(mode={mode!r}) of extract_feat (backbone + neck)'


def _first_call_ms(step: Callable[[], object], device: torch.device) -> float:
    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def config_benchmark(config, checkpoint=None, shape: Optional[Tuple[int, int]] = None,
                     device: str = 'cpu', num_iters: int = 50, warmup: int = 5,
                     fuse: bool = False, mode: str = 'predict',
                     cfg_options: Optional[dict] = None,
                     compile_mode: Optional[str] = None) -> BenchmarkResult:
    """Latency of the detector/segmentor of a config on a synthetic image.

    Args:
        config (str | Path | Config): detection or segmentation config.
        checkpoint (str | Path, optional): weights; random weights if None (the network
            costs the same, post-processing may see more or fewer boxes than a trained one).
        shape (tuple[int, int], optional): image ``(H, W)``; by default 800x1280 for
            detection and 512x512 for segmentation.
        device (str): 'cpu' or 'cuda' (or 'cuda:N'). Default: 'cpu'.
        num_iters (int): timed iterations. Default: 50.
        warmup (int): untimed iterations first. Default: 5.
        fuse (bool): apply :func:`fuse_for_inference` first. Default: False.
        mode (str): 'predict' times ``model.test_step`` (preprocessing, network and
            post-processing); 'tensor' times the network alone. Default: 'predict'.
        cfg_options (dict, optional): config overrides (``--cfg-options``).
        compile_mode (str, optional): ``torch.compile`` the backbone and neck with this mode
            (:func:`compile_features`); the first call (compiling) is timed on its own,
            before the warm-up. Default: None (eager).

    Returns:
        BenchmarkResult: per-iteration times and their statistics.
    """
    from mmmobilemamba.apis import build_model, detect_codebase, load_config

    from mmmobilemamba.datasets.dummy_batch import DEFAULT_SHAPES, make_dummy_batch, preprocess

    if mode not in ('predict', 'tensor'):
        raise ValueError(f"mode must be 'predict' or 'tensor', got {mode!r}")
    torch_device = torch.device(device)
    if torch_device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('device cuda was asked for but CUDA is not available')
    cfg = load_config(config, cfg_options)
    scope = detect_codebase(cfg)
    shape = tuple(shape or DEFAULT_SHAPES[scope])
    model = build_model(cfg, checkpoint=checkpoint, device=device)
    notes = []
    if fuse:
        notes.append('fused: ' + ', '.join(fuse_for_inference(model)))
    batch = make_dummy_batch(scope, shape)
    if mode == 'predict':
        def step():
            return model.test_step(batch)
    else:
        data = preprocess(model, batch)

        def step():
            return model(data['inputs'], data['data_samples'], mode='tensor')

    first_call = None
    if compile_mode is not None:
        notes.append(compile_features(model, compile_mode))
        first_call = _first_call_ms(step, torch_device)
    times = time_model(step, torch_device, num_iters=num_iters, warmup=warmup)
    return BenchmarkResult(times, device=str(torch_device), shape=shape, warmup=warmup,
                           mode=mode, notes=notes, first_call_ms=first_call)
