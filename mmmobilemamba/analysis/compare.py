"""The paper's detectors and segmentors against the models mmdet/mmseg ship with a standard
backbone in the same head: inference latency, training step time and peak training memory,
all measured in one run.

Latency is ``model.test_step`` on one synthetic image, covering preprocessing, network and
post-processing. A training step is ``model.train_step`` on a batch with random ground truth:
forward, losses, backward and an SGD update. Both are timed in interleaved rounds, one call
per model per round, so that a change of load on the machine hits every model alike. Peak
memory is measured in a fresh process per model so that no model inherits another's
allocations. On CUDA it is the peak of ``torch.cuda.max_memory_allocated`` (weights
included); on CPU (Linux) it is the highest resident memory during the training steps above
the resident memory before them (imports, the model): gradients, optimizer state,
activations.
"""
import multiprocessing
import queue as queue_module
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ['Contender', 'Comparison', 'ModelFigures', 'PAPER_COMPARISONS', 'run_comparison',
           'training_memory', 'format_comparisons']


@dataclass(frozen=True)
class Contender:
    """One model of a comparison.

    Args:
        label (str): the backbone's name in the table, e.g. 'RegNetX-800MF'.
        config (str): a config file, relative to the repository root unless absolute, or a
            config shipped with an installed codebase (``'mmdet::...'``).
        cfg_options (tuple): ``(key, value)`` overrides, e.g. the number of classes of a
            Cityscapes config compared on ADE20K.
    """

    label: str
    config: str
    cfg_options: Tuple[Tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Comparison:
    """A paper model and the library models it is compared with, on the same input.

    Args:
        task (str): the detector or segmentor, e.g. 'RetinaNet'.
        ours (Contender): the MobileMamba model (a config of this repository).
        peers (tuple[Contender]): the same head with a standard backbone; the first is the
            reference of the ratios.
        shape (tuple[int, int], optional): image ``(H, W)``; the codebase's default if None.
        num_classes (int): labels of the random ground truth. Default: 80 (COCO).
    """

    task: str
    ours: Contender
    peers: Tuple[Contender, ...]
    shape: Optional[Tuple[int, int]] = None
    num_classes: int = 80


@dataclass
class ModelFigures:
    """What :func:`run_comparison` measured of one model (times in ms, memory in MiB)."""

    task: str
    label: str
    params_m: float
    latency_ms: float
    train_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    first_call_ms: Optional[float] = None  # compiled: the first inference call (compiling)


# an mmseg Cityscapes config made an ADE20K model: 150 classes, 512x512 training crops
_ADE20K = (('model.decode_head.num_classes', 150), ('model.auxiliary_head.num_classes', 150),
           ('model.data_preprocessor.size', (512, 512)))


_MB = 'configs/mobilemamba/'
_R18_DEEPLAB = 'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py'
_R18_PSP = 'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py'

# The paper's models with the closest models mmdet 3.3 / mmseg 1.2 ship (same head and neck):
# RegNetX-800MF has MobileMamba-B1's FLOPs; ResNet-18/50 are the usual baselines. mmseg ships
# DeepLabv3/PSPNet with ResNet-18 only for Cityscapes: compared with 150 classes.
PAPER_COMPARISONS: Tuple[Comparison, ...] = (
    Comparison('RetinaNet', Contender('MobileMamba-B1', _MB + 'retinanet_mobilemamba-b1_fpn_1x_coco.py'),
               (Contender('RegNetX-800MF', 'mmdet::regnet/retinanet_regnetx-800MF_fpn_1x_coco.py'),
                Contender('ResNet-18', 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'))),
    Comparison('Mask R-CNN', Contender('MobileMamba-B1', _MB + 'mask-rcnn_mobilemamba-b1_fpn_1x_coco.py'),
               (Contender('RegNetX-800MF',
                          'mmdet::regnet/mask-rcnn_regnetx-800MF_fpn_ms-poly-3x_coco.py'),
                Contender('ResNet-50', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))),
    Comparison('SSDLite 320', Contender('MobileMamba-B1',
                                        _MB + 'ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py'),
               # mmdet 3.3's SSDHead cannot predict (see SSDLiteHead): the same head with the fix
               (Contender('MobileNetV2', 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
                          (('model.bbox_head.type', 'SSDLiteHead'),)),),
               shape=(320, 320)),
    Comparison('Semantic FPN', Contender('MobileMamba-B4',
                                         _MB + 'fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py'),
               (Contender('ResNet-50', 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'),),
               num_classes=150),
    Comparison('DeepLabv3', Contender('MobileMamba-B4',
                                      _MB + 'deeplabv3_mobilemamba-b4_4xb8-80k_ade20k-512x512.py'),
               (Contender('ResNet-18-D8', _R18_DEEPLAB, _ADE20K),), num_classes=150),
    Comparison('PSPNet', Contender('MobileMamba-B4',
                                   _MB + 'pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py'),
               (Contender('ResNet-18-D8', _R18_PSP, _ADE20K),), num_classes=150),
)


def _config_path(config: str, root: Path) -> str:
    if '::' in config or Path(config).is_absolute():
        return config
    return str(root / config)


def _build(contender: Contender, root: Path, device: str):
    """The model (random weights, eval mode, SyncBN reverted) and its codebase."""
    from mmmobilemamba.apis import build_model
    from mmmobilemamba.engine.config import detect_codebase, load_config
    cfg = load_config(_config_path(contender.config, root), dict(contender.cfg_options))
    return build_model(cfg, device=device), detect_codebase(cfg)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _optim_wrapper(model: torch.nn.Module):
    from mmengine.optim import OptimWrapper
    # a tiny step: the weights stay where they are, the work is a real update's
    return OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9,
                                        weight_decay=1e-4))


def _train_batch(comparison: Comparison, scope: str, shape, batch_size: int) -> dict:
    from mmmobilemamba.datasets.dummy_batch import make_dummy_batch
    return make_dummy_batch(scope, shape, batch_size=batch_size, with_annotations=True,
                            num_classes=comparison.num_classes)


def _shape(comparison: Comparison, scope: str,
           shapes: Optional[Dict[str, Tuple[int, int]]]) -> Tuple[int, int]:
    from mmmobilemamba.datasets.dummy_batch import DEFAULT_SHAPES
    if comparison.shape is not None:
        return comparison.shape
    return tuple((shapes or {}).get(scope) or DEFAULT_SHAPES[scope])


def run_comparison(comparison: Comparison, root: Path, device: str = 'cpu',
                   shapes: Optional[Dict[str, Tuple[int, int]]] = None, num_iters: int = 10,
                   warmup: int = 2, train_batch: int = 2, train_iters: int = 3,
                   memory: bool = True,
                   compile_mode: Optional[str] = None) -> List[ModelFigures]:
    """Measure the models of ``comparison`` in interleaved rounds.

    Args:
        comparison (Comparison): what to compare.
        root (Path): the repository root (where this repository's configs lie).
        device (str): 'cpu' or 'cuda[:N]'. Default: 'cpu'.
        shapes (dict, optional): image ``(H, W)`` per codebase ('mmdet', 'mmseg') where the
            comparison fixes none. Default: :data:`mmmobilemamba.datasets.dummy_batch.DEFAULT_SHAPES`.
        num_iters (int): timed inference rounds. Default: 10.
        warmup (int): untimed rounds first (inference and training). Default: 2.
        train_batch (int): images per training step; 0 skips training. Default: 2.
        train_iters (int): timed training rounds. Default: 3.
        memory (bool): measure peak training memory (a fresh process per model).
            Default: True.
        compile_mode (str, optional): ``torch.compile`` every model's backbone and neck with
            this mode (:func:`~.benchmark.compile_features`); the first round, compiling, is
            then never timed (its inference call is kept as ``first_call_ms``). The memory
            processes run eager. Default: None (eager).

    Returns:
        list[ModelFigures]: ours first, then the peers.
    """
    from mmmobilemamba.datasets.dummy_batch import make_dummy_batch
    if num_iters < 1 or warmup < 0 or train_batch < 0 or train_iters < 1:
        raise ValueError('need num_iters >= 1, warmup >= 0, train_batch >= 0 and '
                         f'train_iters >= 1; got {num_iters}, {warmup}, {train_batch}, '
                         f'{train_iters}')
    torch_device = torch.device(device)
    contenders = (comparison.ours,) + comparison.peers
    built = [_build(c, root, device) for c in contenders]
    scopes = {scope for _, scope in built}
    if len(scopes) != 1:
        raise ValueError(f'{comparison.task}: models from different codebases {scopes}')
    scope = scopes.pop()
    shape = _shape(comparison, scope, shapes)
    models = [model for model, _ in built]
    if compile_mode is not None:
        from .benchmark import compile_features
        for model in models:
            compile_features(model, compile_mode)
        warmup = max(1, warmup)  # compiling happens in the first round: never timed
    figures = [ModelFigures(comparison.task, c.label,
                            sum(p.numel() for p in m.parameters()) / 1e6, 0.0)
               for c, m in zip(contenders, models)]

    batch = make_dummy_batch(scope, shape)
    latencies = [[] for _ in models]
    with torch.no_grad():
        for round_ in range(warmup + num_iters):
            for model, times, fig in zip(models, latencies, figures):
                _sync(torch_device)
                ms = _timed(lambda: (model.test_step(batch), _sync(torch_device)))
                if round_ >= warmup:
                    times.append(ms)
                elif round_ == 0 and compile_mode is not None:
                    fig.first_call_ms = ms
    for fig, times in zip(figures, latencies):
        fig.latency_ms = statistics.median(times)

    if train_batch:
        data = _train_batch(comparison, scope, shape, train_batch)
        wrappers = [_optim_wrapper(m) for m in models]
        steps = [[] for _ in models]
        for model in models:
            model.train()
        for round_ in range(warmup + train_iters):
            for model, wrapper, times in zip(models, wrappers, steps):
                ms = _timed(lambda: (model.train_step(data, wrapper), _sync(torch_device)))
                if round_ >= warmup:
                    times.append(ms)
        for fig, times in zip(figures, steps):
            fig.train_ms = statistics.median(times)
        del wrappers
        if memory:
            for fig, contender in zip(figures, contenders):
                fig.peak_mib = training_memory(comparison, contender, root, device, shape,
                                               train_batch, steps=max(1, warmup))
    return figures


class _ResidentPeak:
    """Highest resident memory (bytes) of this process while inside, sampled every
    millisecond from ``/proc/self/statm`` by a thread (the steps release the GIL in torch);
    ``baseline`` is the resident memory on entry."""

    def __init__(self) -> None:
        import os
        self._page = os.sysconf('SC_PAGE_SIZE')
        self.baseline = self.peak = self._resident()
        self._done = None

    def _resident(self) -> int:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self._resident())

    def __enter__(self) -> '_ResidentPeak':
        import threading
        self._done = threading.Event()
        self.baseline = self.peak = self._resident()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._resident())


def _memory_child(*args) -> None:
    queue = args[-1]
    try:
        queue.put(_measure_training_memory(*args[:-1]))
    except BaseException as err:  # reported by the parent, with the child's message
        queue.put(f'{type(err).__name__}: {err}')


def _measure_training_memory(comparison, contender, root, device, shape, batch_size,
                             steps) -> float:
    import mmmobilemamba  # noqa: F401  (registers the backbone in the fresh process)
    model, scope = _build(contender, root, device)
    data = _train_batch(comparison, scope, shape, batch_size)
    wrapper = _optim_wrapper(model)
    model.train()
    torch_device = torch.device(device)
    if torch_device.type == 'cuda':
        torch.cuda.synchronize(torch_device)
        torch.cuda.reset_peak_memory_stats(torch_device)
    with _ResidentPeak() as resident:
        for _ in range(steps):
            model.train_step(data, wrapper)
    if torch_device.type == 'cuda':
        torch.cuda.synchronize(torch_device)
        return torch.cuda.max_memory_allocated(torch_device) / 2**20
    return (resident.peak - resident.baseline) / 2**20


def training_memory(comparison: Comparison, contender: Contender, root: Path, device: str,
                    shape: Tuple[int, int], batch_size: int, steps: int = 2,
                    timeout: float = 1800.0) -> float:
    """Peak training memory of one model in MiB, measured in a fresh (spawned) process.

    CUDA: ``torch.cuda.max_memory_allocated`` over ``steps`` training steps (weights,
    gradients, optimizer state, activations). CPU (Linux): the highest resident memory during
    the steps above the resident memory before them (sampled every millisecond).
    """
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(comparison, contender, root, device,
                                                        shape, batch_size, steps, queue))
    child.start()
    deadline = time.monotonic() + timeout
    value = None
    try:
        while value is None and time.monotonic() < deadline:
            try:
                value = queue.get(timeout=1.0)
            except queue_module.Empty:
                if not child.is_alive() and queue.empty():
                    break  # died without a word (killed, out of memory)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    what = f'{comparison.task} / {contender.label}: measuring training memory'
    if value is None:
        raise RuntimeError(f'{what}: the process gave no result (exit code {child.exitcode})')
    if isinstance(value, str):
        raise RuntimeError(f'{what} failed: {value}')
    return value


def _cell(value: Optional[float], ref: Optional[float], digits: int = 1) -> str:
    if value is None:
        return '- | -'
    ratio = f'{value / ref:.2f}x' if ref else '-'
    return f'{value:.{digits}f} | {ratio}'


def format_comparisons(results: Sequence[List[ModelFigures]]) -> str:
    """A markdown table: one block of rows per comparison, ratios to its first peer."""
    head = ('| model | backbone | params (M) | latency ms/img | ratio | train step ms | ratio | '
            'peak train memory MiB | ratio |')
    lines = [head, '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for figures in results:
        ref = figures[1] if len(figures) > 1 else figures[0]
        for fig in figures:
            lines.append(f'| {fig.task} | {fig.label} | {fig.params_m:.1f} | '
                         f'{_cell(fig.latency_ms, ref.latency_ms)} | '
                         f'{_cell(fig.train_ms, ref.train_ms)} | '
                         f'{_cell(fig.peak_mib, ref.peak_mib, 0)} |')
    return '\n'.join(lines)
