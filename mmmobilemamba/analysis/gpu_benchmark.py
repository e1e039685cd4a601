"""The backbone table of the GPU check: MobileMamba against mmdet's backbones, in one run.

Measured, each in its own cell (a failure is reported in the cell and the run goes on):

- eval forward (ms, median of ``repeats`` after ``warmup``, the device synchronised around each
  call) under ``torch.inference_mode`` per setting (batch, size) and dtype (fp32, bf16
  autocast), per model and form. MobileMamba's forms: ``eager`` (as built), ``deployed``
  (``switch_to_deploy(device=<the device>)``), ``deployed-cpu-form``
  (``switch_to_deploy(device='cpu')`` then moved: the CPU-tuned form, the "before" figure) and
  ``compiled`` (``torch.compile`` of the deployed model, under ``torch.no_grad``); the
  references' forms: ``eager`` and ``compiled``. Ratios are to RegNetX-800MF eager of the same
  setting and dtype (compiled rows also to RegNetX-800MF compiled);
- a training step of the eager model (train mode, SGD with momentum, loss = sum of the output
  means), its time and, on CUDA, its peak memory above what was allocated before;
- GPU kernels per forward (torch.profiler, 3 forwards);
- batch-1 latency, eager against the forward captured in a CUDA graph and replayed;
- the targets (issue 19, item 6) that the run measured, PASS or FAIL, each naming the forms it
  compares (whole-model targets from the figures of
  :func:`~mmmobilemamba.analysis.compare.run_comparison`). :data:`TARGET_CELLS` are the
  measurements they need, which the GPU check takes first (:meth:`GpuBenchmark.run_cells`).

Results are plain JSON-able dicts (:class:`GpuBenchmark.results`), so a report can be rendered
again from a saved run (:func:`format_report`).
"""
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .benchmark import COMPILE_MODES
from .backbones import REFERENCE, backbone_label, build_backbone

__all__ = ['MM_FORMS', 'REF_FORMS', 'COMPILE_MODES', 'GpuBenchmark', 'Target',
           'evaluate_targets', 'format_report', 'parse_setting', 'count_device_kernels',
           'environment', 'save_json', 'merge_results', 'WHOLE_MODEL_TARGETS', 'TARGET_CELLS']

MM_FORMS = ('eager', 'deployed', 'deployed-channels-last', 'deployed-cpu-form', 'compiled')
REF_FORMS = ('eager', 'compiled')
DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
_B1 = 'MobileMamba-B1'
# a compile of B1 took 45-52 s on an H200: no compile is started with less budget left
COMPILE_RESERVE_S = 60.0
_KERNEL_FORWARDS = 3
_TARGET_EVAL = (32, 512)
_TARGET_TRAIN = (16, 512)

# The measurements the targets need, by part of the GPU check (each part has its own time
# limit there): (section, backbone key, form, batch, size, dtype), in order.
TARGET_CELLS: Dict[str, Tuple[Tuple[str, str, Optional[str], int, int, str], ...]] = {
    'eval': tuple(cell for dtype in ('fp32', 'bf16') for cell in (
        ('eval', 'regnetx_800mf', 'eager', *_TARGET_EVAL, dtype),
        ('eval', 'b1', 'deployed', *_TARGET_EVAL, dtype))) + (
        ('eval', 'b1', 'deployed-channels-last', *_TARGET_EVAL, 'bf16'),),  # the layout's
    'train': tuple(('train', key, None, *_TARGET_TRAIN, dtype) for dtype in ('fp32', 'bf16')
                   for key in ('regnetx_800mf', 'b1')),
    'compiled': (('eval', 'regnetx_800mf', 'eager', *_TARGET_EVAL, 'bf16'),
                 ('eval', 'b1', 'compiled', *_TARGET_EVAL, 'bf16')),
}


def parse_setting(text: str) -> Tuple[int, int]:
    """'32x512' -> (batch 32, size 512)."""
    try:
        batch, size = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'a setting is BATCHxSIZE, e.g. 32x512; got {text!r}') from None
    if batch < 1 or size < 1:
        raise ValueError(f'a setting needs batch and size >= 1, got {text!r}')
    return batch, size


def _setting_name(batch: int, size: int) -> str:
    return f'{size}²×b{batch}'


def environment(device: torch.device) -> str:
    """One line: software versions, the device and its numeric settings."""
    parts = [f'Python {platform.python_version()}', f'torch {torch.__version__}']
    try:
        import triton
        parts.append(f'Triton {triton.__version__}')
    except ImportError:
        pass
    for name in ('mmengine', 'mmcv', 'mmdet'):
        try:
            parts.append(f'{name} {__import__(name).__version__}')
        except ImportError:
            pass
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        parts.append(f'{props.name} ({props.multi_processor_count} SMs, '
                     f'{props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, '
                     f'cuDNN {torch.backends.cudnn.version()}')
        parts.append(f'TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, '
                     f'cuDNN conv {torch.backends.cudnn.allow_tf32}; '
                     f'cudnn.benchmark {torch.backends.cudnn.benchmark}')
    else:
        parts.append(f'{device.type}, {torch.get_num_threads()} threads, '
                     f'{platform.processor() or platform.machine()}')
    return ', '.join(parts)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)]


def _short(err: BaseException, limit: int = 140) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    text = f'{type(err).__name__}: {lines[0] if lines else ""}'.strip()
    return text if len(text) <= limit else text[:limit - 1] + '…'


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int,
               warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def count_device_kernels(events) -> int:
    """How many GPU kernels a profile holds: its device-side events (``device_type`` CUDA),
    memory copies and sets excepted.

    Args:
        events: ``prof.events()`` of a ``torch.profiler.profile`` run (any iterable of events
            with ``device_type`` and ``name``).
    """
    count = 0
    for evt in events:
        # str(): DeviceType's home moved between torch versions; its name did not
        if str(getattr(evt, 'device_type', '')).split('.')[-1] != 'CUDA':
            continue
        if str(getattr(evt, 'name', '')).startswith(('Memcpy', 'Memset')):
            continue
        count += 1
    return count


def _count_from_averages(prof) -> int:
    """Fallback when no device event came back: operators that took device time, by count."""
    total = 0
    for avg in prof.key_averages():
        device_us = getattr(avg, 'self_device_time_total', None)
        if device_us is None:
            device_us = getattr(avg, 'self_cuda_time_total', 0)
        if device_us and device_us > 0 and not str(avg.key).startswith(('Memcpy', 'Memset')):
            total += avg.count
    return total


@dataclass
class Target:
    """One target: ``measured`` (a ratio) must be at most ``limit`` (below it if ``strict``);
    ``name`` says what is compared with what, in which forms."""

    name: str
    limit: float
    measured: Optional[float] = None
    detail: str = ''
    strict: bool = False
    before: Optional[float] = None

    @property
    def status(self) -> str:
        """'PASS', 'FAIL' or 'not measured'."""
        if self.measured is None:
            return 'not measured'
        ok = self.measured < self.limit if self.strict else self.measured <= self.limit
        return 'PASS' if ok else 'FAIL'

    def line(self) -> str:
        """A markdown list item."""
        figure = '' if self.measured is None else f': {self.measured:.2f}x'
        detail = f' ({self.detail})' if self.detail else ''
        bound = '<' if self.strict else '<='
        before = '' if self.before is None else f'; first GPU run {self.before:g}x'
        return (f'- **{self.status}** {self.name} (target {bound} {self.limit:g}x{before})'
                f'{figure}{detail}')


def _find(records: Sequence[dict], **keys) -> Optional[dict]:
    for rec in records:
        if all(rec.get(k) == v for k, v in keys.items()) and rec.get('ms') is not None:
            return rec
    return None


def _ratio_target(name: str, limit: float, ours: Optional[dict], ref: Optional[dict],
                  before: Optional[float] = None) -> Target:
    if ours is None or ref is None:
        return Target(name, limit, before=before)
    a, b = ours['ms'], ref['ms']
    return Target(name, limit, a / b, f'{a:.2f} / {b:.2f} ms', before=before)


# the first GPU run (docs: gpu_profile_h200.md, one H200, 2026-12-04), shown beside each target
_BEFORE = {'eval fp32': 5.5, 'eval bf16': 1.9, 'compiled/eager': 1.48, 'compiled/compiled': 2.49,
           'train fp32': 2.6, 'train bf16': 2.9, 'train bf16/fp32': 1.09, 'Mask R-CNN': 1.63,
           'Semantic FPN': 2.22}


# (task, ours, peer, limit) of the whole models: the training step of the task's model
WHOLE_MODEL_TARGETS = (('Mask R-CNN', _B1, REFERENCE, 1.2),
                       ('Semantic FPN', 'MobileMamba-B4', 'ResNet-50', 1.3))


# what each target compares, as the report names it
_DEPLOYED = 'B1 deployed for CUDA (BN folded, Triton kernels, NCHW)'
_REGNET_EAGER = 'RegNetX-800MF eager (BN unfolded)'
_TRAINED = 'eager, train mode, frozen BN statistics'


def evaluate_targets(results: dict, whole_model: Optional[Sequence[dict]] = None,
                     batch: int = _TARGET_EVAL[0], size: int = _TARGET_EVAL[1]) -> List[Target]:
    """The targets (issue 19, item 6; ratios to the peer measured on the same GPU).

    Args:
        results (dict): :attr:`GpuBenchmark.results` (or the same loaded from JSON).
        whole_model (list[dict], optional): ModelFigures of the whole-model comparison as
            dicts (``task``, ``label``, ``train_ms``, ...).
        batch, size: the eval setting of the backbone targets. Default: 32, 512.

    Returns:
        list[Target]: every target, measured or not.
    """
    ev = results.get('eval', [])
    setting = _setting_name(batch, size)
    targets = []
    for dtype in ('fp32', 'bf16'):
        at = dict(batch=batch, size=size, dtype=dtype)
        targets.append(_ratio_target(
            f'B1 eval {setting} {dtype}: {_DEPLOYED} vs {_REGNET_EAGER}',
            1.5, _find(ev, model=_B1, form='deployed', **at),
            _find(ev, model=REFERENCE, form='eager', **at), _BEFORE[f'eval {dtype}']))
    at = dict(batch=batch, size=size, dtype='bf16')
    b1_compiled = _find(ev, model=_B1, form='compiled', **at)
    targets.append(_ratio_target(
        f'B1 compiled {setting} bf16: torch.compile of the CUDA deploy form vs {_REGNET_EAGER}',
        1.0, b1_compiled, _find(ev, model=REFERENCE, form='eager', **at),
        _BEFORE['compiled/eager']))
    targets.append(_ratio_target(
        f'B1 compiled {setting} bf16 vs RegNetX-800MF compiled (both torch.compile)', 1.5,
        b1_compiled, _find(ev, model=REFERENCE, form='compiled', **at),
        _BEFORE['compiled/compiled']))
    train = results.get('train', [])
    for dtype in ('fp32', 'bf16'):
        targets.append(_ratio_target(
            f'B1 training step {dtype} vs RegNetX-800MF (both {_TRAINED})', 1.5,
            _find(train, model=_B1, dtype=dtype), _find(train, model=REFERENCE, dtype=dtype),
            _BEFORE[f'train {dtype}']))
    # "bf16 faster than fp32": the ratio bf16 / fp32 below 1 (a tie fails)
    bf16_vs_fp32 = _ratio_target('B1 training step bf16 autocast vs fp32 (bf16 faster)', 1.0,
                                 _find(train, model=_B1, dtype='bf16'),
                                 _find(train, model=_B1, dtype='fp32'),
                                 _BEFORE['train bf16/fp32'])
    bf16_vs_fp32.strict = True
    targets.append(bf16_vs_fp32)
    figures = whole_model or []
    for task, ours, peer, limit in WHOLE_MODEL_TARGETS:
        def get(label, task=task):
            for fig in figures:
                if fig.get('task') == task and fig.get('label') == label and fig.get('train_ms'):
                    return {'ms': fig['train_ms']}
            return None
        targets.append(_ratio_target(
            f'{task} {ours.split("-")[-1]} training step vs {peer} (the whole model, same '
            'head and neck, eager)', limit, get(ours), get(peer), _BEFORE[task]))
    return targets


def _fmt_ms(ms: Optional[float]) -> str:
    return '-' if ms is None else (f'{ms:.2f}' if ms < 100 else f'{ms:.1f}')


def _cell(rec: Optional[dict], ref: Optional[dict], ref_compiled: Optional[dict]) -> str:
    if rec is None:
        return ''
    if rec.get('ms') is None:
        return rec.get('error') or rec.get('skipped') or '-'
    text = _fmt_ms(rec['ms'])
    ratios = []
    if ref is not None and ref.get('ms'):
        ratios.append(f'{rec["ms"] / ref["ms"]:.2f}x')
    if rec['form'] == 'compiled' and ref_compiled is not None and ref_compiled.get('ms'):
        ratios.append(f'{rec["ms"] / ref_compiled["ms"]:.2f}x of compiled')
    return f'{text} ({"; ".join(ratios)})' if ratios else text


def _rows(records: Sequence[dict]) -> List[Tuple[str, str]]:
    rows = []
    for rec in records:
        key = (rec['model'], rec.get('form', ''))
        if key not in rows:
            rows.append(key)
    return rows


def _eval_table(results: dict) -> List[str]:
    ev = results.get('eval', [])
    if not ev:
        return ['(not measured)']
    columns = []
    for rec in ev:
        col = (rec['batch'], rec['size'], rec['dtype'])
        if col not in columns:
            columns.append(col)
    columns.sort(key=lambda c: (c[1], -c[0], c[2] != 'fp32'))
    lines = ['| model | form | ' + ' | '.join(f'{_setting_name(b, s)} {d}' for b, s, d in columns)
             + ' |', '|---|---|' + '---:|' * len(columns)]
    for model, form in _rows(ev):
        cells = []
        for b, s, d in columns:
            at = dict(batch=b, size=s, dtype=d)
            rec = next((r for r in ev if r['model'] == model and r['form'] == form
                        and all(r[k] == v for k, v in at.items())), None)
            cells.append(_cell(rec, _find(ev, model=REFERENCE, form='eager', **at),
                               _find(ev, model=REFERENCE, form='compiled', **at)))
        lines.append(f'| {model} | {form} | ' + ' | '.join(cells) + ' |')
    compiles = [r for r in ev if r['form'] == 'compiled' and r.get('first_call_s') is not None]
    if compiles:
        lines.append('')
        lines.append('Compile (first call): ' + ', '.join(
            f'{r["model"]} {_setting_name(r["batch"], r["size"])} {r["dtype"]} '
            f'{r["first_call_s"]:.1f} s' for r in compiles))
    return lines


def _train_table(results: dict) -> List[str]:
    train = results.get('train', [])
    if not train:
        return ['(not measured)']
    dtypes = [d for d in DTYPES if any(r['dtype'] == d for r in train)]
    head = '| model | ' + ' | '.join(f'{d} ms | ratio' for d in dtypes)
    rule = '|---|' + '---:|---:|' * len(dtypes)
    if set(dtypes) == set(DTYPES):
        head += ' | bf16 / fp32'
        rule += '---:|'
    head += ' | peak memory ' + ' / '.join(dtypes) + ' GiB |'
    rule += '---:|'
    lines = [head, rule]
    for model, _ in _rows(train):
        cells, peaks = [], []
        for d in dtypes:
            rec = next((r for r in train if r['model'] == model and r['dtype'] == d), None)
            ref = _find(train, model=REFERENCE, dtype=d)
            if rec is None or rec.get('ms') is None:
                cells.append(f'{(rec or {}).get("error") or (rec or {}).get("skipped") or "-"} | -')
            else:
                ratio = f'{rec["ms"] / ref["ms"]:.2f}x' if ref else '-'
                cells.append(f'{_fmt_ms(rec["ms"])} | {ratio}')
            peak = (rec or {}).get('peak_gib')
            peaks.append('-' if peak is None else f'{peak:.2f}')
        if set(dtypes) == set(DTYPES):
            fp32, bf16 = (_find(train, model=model, dtype=d) for d in ('fp32', 'bf16'))
            cells.append(f'{bf16["ms"] / fp32["ms"]:.2f}x' if fp32 and bf16 else '-')
        lines.append(f'| {model} | ' + ' | '.join(cells) + f' | {" / ".join(peaks)} |')
    return lines


def _kernel_table(results: dict) -> List[str]:
    kern = results.get('kernels', [])
    if not kern:
        return ['(not measured)']
    dtypes = [d for d in DTYPES if any(r['dtype'] == d for r in kern)]
    lines = ['| model | form | ' + ' | '.join(dtypes) + ' |', '|---|---|' + '---:|' * len(dtypes)]
    for model, form in _rows(kern):
        cells = []
        for d in dtypes:
            rec = next((r for r in kern if r['model'] == model and r['form'] == form
                        and r['dtype'] == d), None)
            if rec is None:
                cells.append('')
            elif rec.get('kernels') is None:
                cells.append(rec.get('error') or rec.get('skipped') or '-')
            else:
                cells.append(f'{rec["kernels"]:,.0f}')
        lines.append(f'| {model} | {form} | ' + ' | '.join(cells) + ' |')
    return lines


def _graph_table(results: dict) -> List[str]:
    graphs = results.get('graphs', [])
    if not graphs:
        return ['(not measured)']
    lines = ['| model | form | eager ms | graph replay ms | eager / graph |',
             '|---|---|---:|---:|---:|']
    for rec in graphs:
        if rec.get('graph_ms') is None:
            what = rec.get('error') or rec.get('skipped') or '-'
            lines.append(f'| {rec["model"]} | {rec["form"]} | {_fmt_ms(rec.get("eager_ms"))} '
                         f'| {what} | - |')
        else:
            lines.append(f'| {rec["model"]} | {rec["form"]} | {_fmt_ms(rec["eager_ms"])} | '
                         f'{_fmt_ms(rec["graph_ms"])} | '
                         f'{rec["eager_ms"] / rec["graph_ms"]:.1f}x |')
    return lines


def format_report(results: dict, whole_model: Optional[Sequence[dict]] = None,
                  whole_model_note: str = '', notes: Sequence[str] = ()) -> str:
    """The markdown report of a run (and of a whole-model comparison, if given).

    Args:
        results (dict): :attr:`GpuBenchmark.results` (or the same loaded from JSON).
        whole_model (list[dict], optional): the whole-model comparison's figures as dicts.
        whole_model_note (str): a line on how the whole models were measured.
        notes (list[str]): extra lines for the top (e.g. the CUDA tests' summary).
    """
    s = results.get('settings_text', {})
    lines = ['# MobileMamba on the GPU: backbone table' +
             (' and whole models' if whole_model else ''), '',
             f'Environment: {results.get("environment", "?")}.', '']
    lines += [f'- {n}' for n in notes]
    if notes:
        lines.append('')
    lines += ['## Targets (ratios to RegNetX-800MF measured in this run)', '']
    lines += [t.line() for t in evaluate_targets(results, whole_model)]
    sections = (('## Backbone eval forward, ms (ratio to RegNetX-800MF eager, same setting '
                 'and dtype)', 'eval', _eval_table),
                ('## Backbone training step, ms (ratio to RegNetX-800MF)', 'train', _train_table),
                ('## GPU kernels per forward', 'kernels', _kernel_table),
                ('## Batch-1 latency: eager against a CUDA graph replay', 'graphs',
                 _graph_table))
    for title, key, table in sections:
        lines += ['', title, '']
        if s.get(key):
            lines += [s[key], '']
        lines += table(results)
    if whole_model:
        from .compare import ModelFigures, format_comparisons
        tasks: Dict[str, List[ModelFigures]] = {}
        for fig in whole_model:
            tasks.setdefault(fig['task'], []).append(ModelFigures(**fig))
        lines += ['', '## Whole models (ratios to the first peer)', '']
        if whole_model_note:
            lines += [whole_model_note, '']
        lines.append(format_comparisons(list(tasks.values())))
    if results.get('notes'):
        lines += ['', '## Notes', ''] + [f'- {n}' for n in results['notes']]
    return '\n'.join(lines) + '\n'


class GpuBenchmark:
    """Runs the backbone table; :attr:`results` fills as it goes.

    Args:
        device (str): 'cuda', 'cuda:N' or 'cpu' (CPU: for tests; kernel counts, CUDA graphs
            and memory are skipped with a note).
        archs (list[str]): MobileMamba archs, e.g. ['b1', 't2'].
        references (list[str]): keys of
            :data:`~mmmobilemamba.analysis.backbones.REFERENCE_BACKBONES`.
        settings (list[tuple[int, int]]): eval (batch, size) pairs.
        dtypes (list[str]): 'fp32' and/or 'bf16' (autocast).
        forms (list[str]): forms to measure, of :data:`MM_FORMS` (the references have
            'eager' and 'compiled' only).
        repeats (int): timed calls per cell (the median is reported).
        warmup (int): untimed calls first.
        compile_mode (str, optional): ``torch.compile``'s mode (None: its default).
        compile_backend (str): ``torch.compile``'s backend. Default: 'inductor'.
        compile_at (list[tuple[int, int]]): settings at which 'compiled' is measured.
        compile_dtypes (list[str]): dtypes at which 'compiled' is measured.
        compile_models (list[str], optional): backbone keys compiled (None: all).
        cpu_form_at (list[tuple[int, int]]): settings at which 'deployed-cpu-form' is measured.
        train_setting (tuple[int, int], optional): (batch, size) of the training step; None
            skips it.
        train_models (list[str], optional): backbone keys trained (None: all).
        kernels_at (tuple[int, int], optional): (batch, size) of the kernel count; None
            skips it.
        kernel_models (list[str], optional): backbone keys profiled (None: all).
        graph_size (int, optional): image size of the CUDA-graph latency (batch 1, fp32);
            None skips it.
        graph_models (list[str], optional): backbone keys (their non-compiled forms).
        budget_s (float, optional): after this many seconds the remaining measurements are
            skipped with a note.
        on_update (callable, optional): called after every cell (e.g. to save the partial
            results).
    """

    def __init__(self, device: str = 'cuda', archs: Sequence[str] = ('b1', 't2'),
                 references: Sequence[str] = ('regnetx_800mf', 'resnet18', 'resnet50',
                                              'mobilenetv2'),
                 settings: Sequence[Tuple[int, int]] = ((256, 256), (32, 512), (8, 1024)),
                 dtypes: Sequence[str] = ('fp32', 'bf16'), forms: Sequence[str] = MM_FORMS,
                 repeats: int = 10, warmup: int = 3, compile_mode: Optional[str] = None,
                 compile_backend: str = 'inductor',
                 compile_at: Sequence[Tuple[int, int]] = ((32, 512),),
                 compile_dtypes: Sequence[str] = ('bf16',),
                 compile_models: Optional[Sequence[str]] = None,
                 cpu_form_at: Sequence[Tuple[int, int]] = ((32, 512),),
                 train_setting: Optional[Tuple[int, int]] = (16, 512),
                 train_models: Optional[Sequence[str]] = None,
                 kernels_at: Optional[Tuple[int, int]] = (32, 512),
                 kernel_models: Optional[Sequence[str]] = None,
                 graph_size: Optional[int] = 512,
                 graph_models: Optional[Sequence[str]] = ('b1', 'regnetx_800mf'),
                 budget_s: Optional[float] = None,
                 on_update: Optional[Callable[[dict], None]] = None) -> None:
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError('device cuda was asked for but CUDA is not available')
        unknown = [f for f in forms if f not in MM_FORMS]
        if unknown:
            raise ValueError(f'unknown form(s) {unknown}: choose from {MM_FORMS}')
        unknown = [d for d in list(dtypes) + list(compile_dtypes) if d not in DTYPES]
        if unknown:
            raise ValueError(f'unknown dtype(s) {unknown}: choose from {tuple(DTYPES)}')
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f'compile mode {compile_mode!r}: choose from {COMPILE_MODES}')
        if repeats < 1 or warmup < 0:
            raise ValueError(f'need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}')
        self.archs = [a.lower() for a in archs]
        self.references = [r.lower() for r in references]
        self.keys = self.archs + self.references
        for key in self.keys:
            backbone_label(key)  # a clear error for an unknown key now, not mid-run
        self.settings, self.dtypes, self.forms = list(settings), list(dtypes), list(forms)
        self.repeats, self.warmup = repeats, warmup
        self.compile_mode, self.compile_backend = compile_mode, compile_backend
        self.compile_at, self.compile_dtypes = list(compile_at), list(compile_dtypes)
        self.compile_models = self._subset(compile_models)
        self.cpu_form_at = list(cpu_form_at)
        self.train_setting, self.train_models = train_setting, self._subset(train_models)
        self.kernels_at, self.kernel_models = kernels_at, self._subset(kernel_models)
        self.graph_size, self.graph_models = graph_size, self._subset(graph_models)
        self.budget_s = budget_s
        self.on_update = on_update
        self._start = time.monotonic()
        self._cpu_models: Dict[str, nn.Module] = {}
        self._forms: Dict[Tuple[str, str], nn.Module] = {}
        self._budget_noted = False
        cuda = self.device.type == 'cuda'
        self.results: dict = {
            'environment': environment(self.device),
            'device': str(self.device),
            'settings_text': {
                'eval': (f'Median of {repeats} after {warmup} warm-up'
                         f'{", `torch.cuda.synchronize()` around each" if cuda else ""}, '
                         'under `torch.inference_mode` (compiled: `torch.no_grad`); bf16 = '
                         '`torch.autocast` bfloat16. Compiled: `torch.compile('
                         f'mode={compile_mode or "default"!r}, '
                         f'backend={compile_backend!r})` of the '
                         'deployed MobileMamba / the eager reference.'),
                'train': (f'Batch {train_setting[0]}, {train_setting[1]}², train mode, SGD '
                          '(momentum 0.9), loss = sum of the output means, eager model; '
                          f'median of {repeats} after {warmup} warm-up. Peak memory: '
                          '`torch.cuda.max_memory_allocated` above what was allocated before '
                          'the model was moved there.') if train_setting else '',
                'kernels': (f'{kernels_at[1]}², b{kernels_at[0]}: device kernels of '
                            f'`torch.profiler` (CUDA activity) over {_KERNEL_FORWARDS} '
                            f'forwards / {_KERNEL_FORWARDS}, memcpy/memset excepted.')
                           if kernels_at else '',
                'graphs': (f'fp32, batch 1, {graph_size}²: median of {repeats} eager calls '
                           'against replays of the forward captured in a `torch.cuda.CUDAGraph`'
                           ' (after warm-up on a side stream, static input).')
                          if graph_size else ''},
            'eval': [], 'train': [], 'kernels': [], 'graphs': [], 'notes': []}

    # -- bookkeeping
    def _subset(self, keys: Optional[Sequence[str]]) -> List[str]:
        if keys is None:
            return list(self.keys)
        return [k.lower() for k in keys if k.lower() in self.keys]

    def elapsed_s(self) -> float:
        """Seconds since the benchmark was made."""
        return time.monotonic() - self._start

    def note(self, text: str) -> None:
        """Add a note to the report (once per text)."""
        if text not in self.results['notes']:
            self.results['notes'].append(text)
            print(f'note: {text}', file=sys.stderr)

    def _over_budget(self, need_s: float = 0.0) -> bool:
        if self.budget_s is None:
            return False
        over = self.elapsed_s() + need_s > self.budget_s
        if over and not self._budget_noted and need_s == 0.0:
            self._budget_noted = True
            self.note(f'time budget of {self.budget_s:.0f} s reached after '
                      f'{self.elapsed_s():.0f} s: the remaining measurements were skipped')
        return over

    def _record(self, section: str, rec: dict, fn: Callable[[], dict],
                need_s: float = 0.0) -> dict:
        """Run one measurement into ``rec``; a failure or the budget is reported in it."""
        self.results[section].append(rec)
        if self._over_budget():
            rec['skipped'] = 'skipped (budget)'
        elif need_s and self._over_budget(need_s):
            rec['skipped'] = f'skipped (< {need_s:.0f} s of budget left)'
        else:
            try:
                rec.update(fn())
            except Exception as err:  # reported in its cell; the table goes on
                rec['error'] = f'error: {_short(err)}'
                print(f'!! {section} {rec}:\n{traceback.format_exc()}', file=sys.stderr)
                if self.device.type == 'cuda':
                    with contextlib.suppress(Exception):
                        torch.cuda.empty_cache()
        shown = {k: v for k, v in rec.items() if k not in ('model', 'form')}
        print(f'  {section}: {rec["model"]} {rec.get("form", "")} {shown}', file=sys.stderr)
        if self.on_update is not None:
            self.on_update(self.results)
        return rec

    # -- models
    def _cpu_model(self, key: str) -> nn.Module:
        if key not in self._cpu_models:
            self._cpu_models[key] = build_backbone(key)
        return self._cpu_models[key]

    def model(self, key: str, form: str) -> nn.Module:
        """The backbone ``key`` in ``form`` on the device (eval mode), built once."""
        if (key, form) in self._forms:
            return self._forms[(key, form)]
        is_mm = key in self.archs
        if form == 'eager':
            model = copy.deepcopy(self._cpu_model(key)).to(self.device)
        elif form in ('deployed', 'deployed-channels-last') and is_mm:
            model = copy.deepcopy(self._cpu_model(key)).to(self.device)
            model.switch_to_deploy(device=self.device.type)
            if form == 'deployed-channels-last':
                model.channels_last = True  # the model converts its input
        elif form == 'deployed-cpu-form' and is_mm:
            model = copy.deepcopy(self._cpu_model(key))
            model.switch_to_deploy(device='cpu')
            model = model.to(self.device)
        elif form == 'compiled':
            base = self.model(key, 'deployed' if is_mm else 'eager')
            kwargs = {} if self.compile_mode is None else {'mode': self.compile_mode}
            model = torch.compile(base, backend=self.compile_backend, **kwargs)
        else:
            raise ValueError(f'{backbone_label(key)} has no form {form!r}')
        model.eval()
        self._forms[(key, form)] = model
        return model

    def _forms_of(self, key: str) -> List[str]:
        allowed = MM_FORMS if key in self.archs else REF_FORMS
        return [f for f in self.forms if f in allowed]

    # -- measurements
    def _eval(self, key: str, form: str, batch: int, size: int, dtype: str) -> dict:
        model = self.model(key, form)
        x = torch.randn(batch, 3, size, size, device=self.device)
        # dynamo and CUDA graphs of reduce-overhead want no inference tensors: no_grad there
        grad_off = torch.no_grad if form == 'compiled' else torch.inference_mode
        with grad_off(), _autocast(self.device, dtype):
            _sync(self.device)
            start = time.perf_counter()
            model(x)  # the first call: compiles a compiled model
            _sync(self.device)
            first_s = time.perf_counter() - start
            ms = _median_ms(lambda: model(x), self.device, self.repeats, self.warmup)
        return {'ms': ms, 'first_call_s': first_s}

    def run_eval(self, compiled: bool) -> None:
        """The eval table without (``compiled=False``) or with only the compiled forms (at
        ``compile_at`` x ``compile_dtypes``, of ``compile_models``)."""
        settings = self.compile_at if compiled else self.settings
        for batch, size in settings:
            for dtype in (self.compile_dtypes if compiled else self.dtypes):
                for key in (self.compile_models if compiled else self.keys):
                    for form in self._forms_of(key):
                        if (form == 'compiled') != compiled:
                            continue
                        if form == 'deployed-cpu-form' and (batch, size) not in self.cpu_form_at:
                            continue
                        rec = dict(model=backbone_label(key), form=form, batch=batch, size=size,
                                   dtype=dtype)
                        self._record('eval', rec, lambda: self._eval(key, form, batch, size, dtype),
                                     need_s=COMPILE_RESERVE_S if compiled else 0.0)

    def _train(self, key: str, batch: int, size: int, dtype: str) -> dict:
        cuda = self.device.type == 'cuda'
        if cuda:
            _sync(self.device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(self.device)
        model = copy.deepcopy(self._cpu_model(key)).to(self.device)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        x = torch.randn(batch, 3, size, size, device=self.device)

        def step():
            with _autocast(self.device, dtype):
                loss = sum(t.float().mean() for t in _tensors(model(x)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(max(1, self.warmup)):  # momentum buffers exist before the peak is read
            step()
        if cuda:
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        ms = _median_ms(step, self.device, self.repeats, 0)
        out = {'ms': ms, 'peak_gib': None}
        if cuda:
            out['peak_gib'] = (torch.cuda.max_memory_allocated(self.device) - before) / 2**30
        del model, optimizer
        return out

    def run_train(self) -> None:
        """The training-step table."""
        if self.train_setting is None:
            return
        batch, size = self.train_setting
        if self.device.type != 'cuda':
            self.note('training step: no peak memory off CUDA')
        for key in self.train_models:
            for dtype in self.dtypes:
                rec = dict(model=backbone_label(key), dtype=dtype, batch=batch, size=size)
                self._record('train', rec, lambda: self._train(key, batch, size, dtype))

    def _kernels(self, key: str, form: str, batch: int, size: int, dtype: str) -> dict:
        from torch.profiler import ProfilerActivity, profile
        model = self.model(key, form)
        x = torch.randn(batch, 3, size, size, device=self.device)
        with torch.inference_mode(), _autocast(self.device, dtype):
            for _ in range(max(1, self.warmup)):
                model(x)
            _sync(self.device)
            # CUDA activity only: a CPU trace of 5,000+ launches takes seconds to parse
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(_KERNEL_FORWARDS):
                    model(x)
                _sync(self.device)
        count = count_device_kernels(prof.events())
        if count == 0:
            count = _count_from_averages(prof)
        return {'kernels': count / _KERNEL_FORWARDS}

    def run_kernels(self) -> None:
        """Kernels per forward of the non-compiled forms."""
        if self.kernels_at is None:
            return
        if self.device.type != 'cuda':
            self.note('kernels per forward: skipped (CUDA only)')
            return
        batch, size = self.kernels_at
        for key in self.kernel_models:
            for form in self._forms_of(key):
                if form == 'compiled':
                    continue
                for dtype in self.dtypes:
                    rec = dict(model=backbone_label(key), form=form, dtype=dtype, batch=batch,
                               size=size)
                    self._record('kernels', rec,
                                 lambda: self._kernels(key, form, batch, size, dtype))

    def _graph(self, key: str, form: str, size: int) -> dict:
        model = self.model(key, form)
        x = torch.randn(1, 3, size, size, device=self.device)
        out = {'eager_ms': None, 'graph_ms': None}
        with torch.inference_mode():
            out['eager_ms'] = _median_ms(lambda: model(x), self.device, self.repeats,
                                         self.warmup)
            # warm-up on a side stream before capture (lazy init, autotuning, Triton compile)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            _sync(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model(x)
            out['graph_ms'] = _median_ms(graph.replay, self.device, self.repeats, self.warmup)
        del graph, static_out
        return out

    def run_graphs(self) -> None:
        """Batch-1 latency, eager against a CUDA graph replay."""
        if self.graph_size is None:
            return
        if self.device.type != 'cuda':
            self.note('CUDA graphs: skipped (CUDA only)')
            return
        for key in self.graph_models:
            for form in self._forms_of(key):
                if form in ('compiled', 'deployed-cpu-form'):
                    continue
                rec = dict(model=backbone_label(key), form=form, size=self.graph_size)
                self._record('graphs', rec, lambda: self._graph(key, form, self.graph_size))

    def run_cells(self, cells: Sequence[Tuple[str, str, Optional[str], int, int, str]]) -> dict:
        """Only the measurements ``cells`` (:data:`TARGET_CELLS`' form: ``(section, key, form,
        batch, size, dtype)``), in order; a compile waits for enough budget."""
        for section, key, form, batch, size, dtype in cells:
            rec = dict(model=backbone_label(key), batch=batch, size=size, dtype=dtype)
            if section == 'train':
                self._record('train', rec, lambda: self._train(key, batch, size, dtype))
                continue
            rec['form'] = form
            self._record('eval', rec, lambda: self._eval(key, form, batch, size, dtype),
                         need_s=COMPILE_RESERVE_S if form == 'compiled' else 0.0)
        self.results['elapsed_s'] = self.elapsed_s()
        return self.results

    def run(self) -> dict:
        """Every measurement, cheapest and most wanted first (a budget cuts the rest)."""
        self.run_eval(compiled=False)
        self.run_train()
        if 'compiled' in self.forms:
            self.run_eval(compiled=True)
        self.run_kernels()
        self.run_graphs()
        self.results['elapsed_s'] = self.elapsed_s()
        return self.results


def merge_results(runs: Sequence[dict]) -> dict:
    """Several runs' results as one (the GPU check measures the targets and the rest of the
    table in separate processes): their measurements in order, the first run's environment
    and settings, every run's notes."""
    merged: dict = {'environment': '?', 'settings_text': {}, 'eval': [], 'train': [],
                    'kernels': [], 'graphs': [], 'notes': []}
    for run in runs:
        if merged['environment'] == '?' and run.get('environment'):
            merged['environment'] = run['environment']
        for key, text in run.get('settings_text', {}).items():
            if text and not merged['settings_text'].get(key):
                merged['settings_text'][key] = text
        for section in ('eval', 'train', 'kernels', 'graphs'):
            merged[section] += run.get(section, [])
        merged['notes'] += [n for n in run.get('notes', []) if n not in merged['notes']]
    return merged


def save_json(results: dict, path: str) -> None:
    """Write ``results`` (or any JSON-able figures) to ``path``, atomically enough that a run
    killed mid-write leaves the previous version."""
    import os
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
