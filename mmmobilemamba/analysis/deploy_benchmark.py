"""One deployment table: backbones and the quickstart models in PyTorch eager, onnxruntime and
ExecuTorch (XNNPACK), float32 and int8, on 1 and 2 threads, measured in one run.

Every model is exported the same way (:func:`mmmobilemamba.deploy.export_network`: folded,
static input, int8 calibrated on 8 synthetic images), the files cached in a work directory
under a key of the package's source and the runtimes' versions (a code change re-exports).
Rounds are interleaved within a block of comparable rows (the backbones at one size; the
quickstart models), so that a load change on the machine hits every contender alike; each cell
is the median of the rounds. Ratios compare rows of one block: a backbone against
RegNetX-800MF in the same runtime, precision and threads.
"""
import ast
import copy
import hashlib
import inspect
import json
import os
import os.path as osp
import platform
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['BENCHMARK_MODELS', 'COLUMN_OPTIONS', 'RUNTIME_COLUMNS', 'DeployBenchmark', 'Row',
           'draw_chart', 'format_tables']

REPO = Path(__file__).resolve().parents[2]
# key -> (label, backbone key or quickstart config, kind); backbones run at every --sizes
BENCHMARK_MODELS: Dict[str, Tuple[str, str, str]] = {
    'b1': ('MobileMamba-B1', 'b1', 'backbone'),
    't2': ('MobileMamba-T2', 't2', 'backbone'),
    'regnetx_800mf': ('RegNetX-800MF', 'regnetx_800mf', 'backbone'),
    'mobilenetv2': ('MobileNetV2', 'mobilenetv2', 'backbone'),
    'retinanet_demo': ('RetinaNet quickstart', 'configs/quickstart/retinanet_mobilemamba_demo-coco.py',
                       'detector'),
    'fpn_demo': ('Semantic FPN quickstart', 'configs/quickstart/fpn_mobilemamba_demo-ade.py',
                 'segmentor'),
}
# the quickstart models at the size their test pipelines feed (after padding)
QUICKSTART_SHAPES = {'retinanet_demo': (384, 384), 'fpn_demo': (160, 160)}
# column -> (runtime, precision); 'pytorch' is eager PyTorch (the model's CPU deploy form)
RUNTIME_COLUMNS: Dict[str, Tuple[str, str]] = {
    'pytorch': ('pytorch', 'fp32'),
    'onnxruntime-fp32': ('onnxruntime', 'fp32'),
    'onnxruntime-int8': ('onnxruntime', 'int8'),
    'executorch-fp32': ('executorch', 'fp32'),
    'executorch-int8': ('executorch', 'int8'),
    'onnxruntime-kernel-fp32': ('onnxruntime', 'fp32'),
    'onnxruntime-kernel-int8': ('onnxruntime', 'int8'),
    'executorch-kernel-fp32': ('executorch', 'fp32'),
    'executorch-kernel-int8': ('executorch', 'int8'),
}
# a column's runtime options (export_network's runtime_options): SS2D's scans by the project's
# kernels (a network without SS2D exports as without the option)
COLUMN_OPTIONS: Dict[str, dict] = {'onnxruntime-kernel-fp32': dict(scan_kernel=True),
                                   'onnxruntime-kernel-int8': dict(scan_kernel=True),
                                   'executorch-kernel-fp32': dict(scan_kernel=True),
                                   'executorch-kernel-int8': dict(scan_kernel=True)}
REFERENCE = 'regnetx_800mf'
CALIBRATION_IMAGES = 8


@dataclass
class Row:
    """One model at one size: its latencies and what its exports recorded.

    Args:
        model (str): key of :data:`BENCHMARK_MODELS`.
        shape (tuple[int, int]): the input ``(H, W)``.
        block (str): the rows it is compared with (interleaved together).
        ms (dict): ``(column, threads)`` -> median milliseconds.
        exports (dict): column -> the export's record (a dict).
    """

    model: str
    shape: Tuple[int, int]
    block: str
    ms: Dict[Tuple[str, int], float] = field(default_factory=dict)
    exports: Dict[str, dict] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """'MobileMamba-B1 224x224'."""
        return f'{BENCHMARK_MODELS[self.model][0]} {self.shape[0]}x{self.shape[1]}'


# the package's parts that shape an exported file: the exporting code, and this benchmark's
# own model building (its weights and norm statistics are in every file; the functions by name
# below, so that a change to the tables or the chart keeps the exports)
EXPORTED_SOURCE = ('ops', 'models', 'deploy', 'analysis/backbones.py')
BUILDING_FUNCTIONS = ('_build', 'connect_zero_initialised_norms', 'estimate_norm_statistics')


def _code_of(source: str) -> str:
    """The code of a module without its comments and docstrings (which change no export)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], 'value', None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def source_key(extra: Sequence[str] = ()) -> str:
    """A hash of the code that shapes an export (comments and docstrings aside) and ``extra``
    (versions): a cached export is reused only while it matches."""
    digest = hashlib.sha1()
    package = REPO / 'mmmobilemamba'
    paths = [path for part in EXPORTED_SOURCE
             for path in ([package / part] if part.endswith('.py')
                          else (package / part).rglob('*.py'))]
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(_code_of(path.read_text()).encode())
    for name in BUILDING_FUNCTIONS:
        digest.update(_code_of(textwrap.dedent(inspect.getsource(globals()[name]))).encode())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def connect_zero_initialised_norms(network: nn.Module) -> List[str]:
    """Set to one the affine weights of the norms that are zero-initialised (MobileMamba's last
    norm of each residual branch, so that a new block starts as the identity).

    With those weights at zero every such branch adds nothing: the mixers, their scans and the
    feed-forward layers would not reach the output, so that the exports' differences from
    PyTorch and their int8 SNRs would measure the stem and the downsampling layers alone. A
    trained network has them non-zero. Speed is unaffected.

    Args:
        network (nn.Module): a model with random weights.

    Returns:
        list[str]: the names of the norms set.
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    connected = []
    with torch.no_grad():
        for name, module in network.named_modules():
            weight = getattr(module, 'weight', None)
            if isinstance(module, norm_types) and weight is not None and not weight.any():
                weight.fill_(1.0)
                connected.append(name)
    return connected


def estimate_norm_statistics(network: nn.Module, images: Sequence[torch.Tensor]) -> None:
    """Set every BatchNorm's statistics to those of ``network``'s activations on ``images``.

    With random weights the activations shrink layer by layer (to ~1e-3 at MobileNetV2's
    end), which no int8 scale represents; statistics estimated on images restore a trained
    network's unit scale, so that the int8 exports' calibration and SNR mean what they do for
    trained weights. Speed is unaffected.

    Args:
        network (nn.Module): a model in eval mode (returns to it).
        images (Sequence[Tensor]): inputs of ``network``.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the images
        norm.train()
    with torch.no_grad():
        if getattr(network, 'kind', None) == 'backbone':
            # one batch: a map of 1x1 at the end of a small input still has a value per image
            network(torch.cat(list(images)))
        else:  # detectors and segmentors: image metas of one image
            for image in images:
                network(image)
    for norm in norms:
        norm.eval()


def _build(model_key: str, shape: Tuple[int, int], calib: int):
    """The model, its input, calibration images and its eager runner's network."""
    from mmmobilemamba.datasets.dummy_batch import make_dummy_batch, preprocess
    from mmmobilemamba.deploy.network import ExportedNetwork
    from mmmobilemamba.models.fuse import fuse_for_inference
    from .backbones import build_backbone

    _, source, kind = BENCHMARK_MODELS[model_key]
    torch.manual_seed(0)
    if kind == 'backbone':
        model = build_backbone(source)
        generator = torch.Generator().manual_seed(0)
        images = [torch.randn(1, 3, *shape, generator=generator) for _ in range(calib + 1)]
    else:
        from mmmobilemamba.apis import build_model, load_config
        cfg = load_config(str(REPO / source))
        model = build_model(cfg)
        scope = 'mmdet' if kind == 'detector' else 'mmseg'
        images = [preprocess(model, make_dummy_batch(scope, shape, seed=seed))['inputs']
                  for seed in range(calib + 1)]
    connect_zero_initialised_norms(model)
    estimate_norm_statistics(ExportedNetwork(model, kind, shape), images[1:])
    folded = copy.deepcopy(model)
    folded.eval()  # mmdet's backbones' train() returns None: do not chain
    fuse_for_inference(folded)
    eager = ExportedNetwork(folded, kind, shape).eval()
    return model, kind, images[0], images[1:], eager


class DeployBenchmark:
    """Exports (cached) and times the table's cells.

    Args:
        work_dir (str): where exports are cached.
        models (Sequence[str]): keys of :data:`BENCHMARK_MODELS`.
        sizes (Sequence[int]): square input sides of the backbones.
        columns (Sequence[str]): keys of :data:`RUNTIME_COLUMNS`.
        threads (Sequence[int]): thread counts.
        rounds (int): timed rounds per block.
        warmup (int): untimed rounds per block.
        fresh (bool): export again even when a cached file matches.
        log (callable): progress messages.
    """

    def __init__(self, work_dir: str, models: Sequence[str], sizes: Sequence[int],
                 columns: Sequence[str], threads: Sequence[int] = (1, 2), rounds: int = 10,
                 warmup: int = 2, fresh: bool = False, log: Callable[[str], None] = print) -> None:
        unknown = [m for m in models if m not in BENCHMARK_MODELS]
        unknown += [c for c in columns if c not in RUNTIME_COLUMNS]
        if unknown:
            raise ValueError(f'unknown model(s) or runtime(s) {unknown}: models '
                             f'{list(BENCHMARK_MODELS)}, runtimes {list(RUNTIME_COLUMNS)}')
        if any(t < 1 for t in threads) or rounds < 1:
            raise ValueError('threads and rounds must be at least 1')
        self.work_dir, self.models, self.sizes = work_dir, list(models), list(sizes)
        self.columns, self.threads = list(columns), list(threads)
        self.rounds, self.warmup, self.fresh, self.log = rounds, warmup, fresh, log
        self._key = None

    def blocks(self) -> List[Tuple[str, List[Tuple[str, Tuple[int, int]]]]]:
        """``[(block name, [(model, shape), ...]), ...]``."""
        blocks = []
        backbones = [m for m in self.models if BENCHMARK_MODELS[m][2] == 'backbone']
        for size in self.sizes:
            if backbones:
                blocks.append((f'backbones {size}x{size}', [(m, (size, size)) for m in backbones]))
        quickstart = [(m, QUICKSTART_SHAPES[m]) for m in self.models if m in QUICKSTART_SHAPES]
        if quickstart:
            blocks.append(('quickstart models', quickstart))
        return blocks

    def cache_key(self) -> str:
        """The source and versions key of this run's exports."""
        if self._key is None:
            from importlib.metadata import PackageNotFoundError, version
            versions = [torch.__version__]
            for package in ('onnx', 'onnxscript', 'onnxruntime', 'executorch', 'torchao'):
                try:
                    versions.append(f'{package} {version(package)}')
                except PackageNotFoundError:
                    pass
            self._key = source_key(versions)
        return self._key

    def _export(self, model: nn.Module, kind: str, x: torch.Tensor,
                calibration: List[torch.Tensor], name: str, runtime: str,
                precision: str, options: Optional[dict] = None) -> Tuple[str, dict]:
        """The cached (or new) export's file and record."""
        from mmmobilemamba.deploy import export_network, get_runtime
        suffix = get_runtime(runtime).suffix
        path = osp.join(self.work_dir, f'{name}_{precision}{suffix}')
        key_file = path + '.key'
        if (not self.fresh and osp.isfile(path) and osp.isfile(key_file)
                and open(key_file).read().strip() == self.cache_key()):
            with open(osp.splitext(path)[0] + '.json') as f:
                return path, json.load(f)
        self.log(f'exporting {name} for {runtime} ({precision}) ...')
        for stale in (path, osp.splitext(path)[0] + '.json', key_file):
            if osp.isfile(stale):
                os.remove(stale)  # ours: a previous run's cache entry
        result = export_network(model, kind, x, path, runtime=runtime, verify=True,
                                quantize=None if precision == 'fp32' else precision,
                                calibration=calibration,
                                calibration_source=f'{len(calibration)} synthetic images',
                                latency_rounds=3, runtime_options=options)
        with open(key_file, 'w') as f:
            f.write(self.cache_key())
        self.log(f'  {result.export_seconds:.0f} s, {result.file_bytes / 2**20:.1f} MiB')
        return path, result.to_dict()

    def _runners(self, rows: List[Row], eagers: List[nn.Module], inputs: List[torch.Tensor],
                 files: List[Dict[str, str]], threads: int) -> Dict[Tuple[int, str], Callable]:
        """``(row index, column) -> run`` of a block at one thread count (sessions loaded)."""
        from mmmobilemamba.deploy.executorch import ExecuTorchSession
        from mmmobilemamba.deploy.onnx import OnnxRuntimeSession
        runners = {}
        for index, (eager, x, row_files) in enumerate(zip(eagers, inputs, files)):
            for column in self.columns:
                runtime, _ = RUNTIME_COLUMNS[column]
                if runtime == 'pytorch':
                    runners[(index, column)] = lambda m=eager, x=x: m(x)
                elif runtime == 'onnxruntime':
                    session = OnnxRuntimeSession(row_files[column], threads,
                                                 allow_spinning=False)
                    runners[(index, column)] = lambda s=session, x=x: s.run(x)
                else:
                    session = ExecuTorchSession(row_files[column], threads)
                    runners[(index, column)] = lambda s=session, x=x: s.run(x)
        return runners

    def run(self) -> List[Row]:
        """Export what is missing, then time every block at every thread count.

        ExecuTorch's XNNPACK programs keep the process's thread pool they were loaded with, so
        the thread counts are timed one after the other (the pool resized, the programs loaded
        again); within a thread count the rounds of a block are interleaved.
        """
        import gc

        from mmmobilemamba.deploy.executorch import set_threads
        from mmmobilemamba.models.layers.ss2d import SS2D
        os.makedirs(self.work_dir, exist_ok=True)
        rows: List[Row] = []
        blocks = []
        for block, members in self.blocks():
            block_rows, eagers, inputs, files = [], [], [], []
            for model_key, shape in members:
                model, kind, x, calibration, eager = _build(model_key, shape, CALIBRATION_IMAGES)
                has_scan = any(isinstance(m, SS2D) for m in model.modules())
                row, row_files = Row(model_key, shape, block), {}
                for column in self.columns:
                    runtime, precision = RUNTIME_COLUMNS[column]
                    if runtime == 'pytorch':
                        continue
                    name = f'{model_key}_{shape[0]}x{shape[1]}_{runtime}'
                    options = COLUMN_OPTIONS.get(column) if has_scan else None
                    if options:  # else the same file as the column without options
                        name += '_' + '_'.join(sorted(options))
                    row_files[column], row.exports[column] = self._export(
                        model, kind, x, calibration, name, runtime, precision, options)
                block_rows.append(row)
                eagers.append(eager)
                inputs.append(x)
                files.append(row_files)
            rows += block_rows
            blocks.append((block, block_rows, eagers, inputs, files))
        uses_executorch = any(RUNTIME_COLUMNS[c][0] == 'executorch' for c in self.columns)
        for threads in self.threads:
            torch.set_num_threads(threads)
            if uses_executorch:
                gc.collect()  # no program of the previous pool left
                set_threads(threads)
            for block, block_rows, eagers, inputs, files in blocks:
                runners = self._runners(block_rows, eagers, inputs, files, threads)
                self.log(f'timing {block}, {threads} thread(s): {len(runners)} cells, '
                         f'{self.rounds} rounds')
                for (index, column), ms in self._time(runners).items():
                    block_rows[index].ms[(column, threads)] = ms
                del runners
                gc.collect()
        return rows

    def _time(self, runners: Dict[Tuple[int, str], Callable]) -> Dict[Tuple[int, str], float]:
        """Median ms per runner over interleaved rounds."""
        from mmmobilemamba.deploy.timing import interleaved_latency
        with torch.inference_mode():
            return interleaved_latency(runners, rounds=self.rounds, warmup=self.warmup)


def environment() -> str:
    """The machine and versions, for the report."""
    from importlib.metadata import PackageNotFoundError, version
    parts = [f'torch {torch.__version__}']
    for package in ('onnxruntime', 'executorch', 'torchao'):
        try:
            parts.append(f'{package} {version(package)}')
        except PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    load = ', load average %.1f / %.1f / %.1f' % os.getloadavg() if hasattr(os, 'getloadavg') \
        else ''
    return f'{cpu}, {cores} cores{load}; ' + ', '.join(parts)


def _cell(row: Row, column: str, threads: int) -> str:
    ms = row.ms.get((column, threads))
    return '-' if ms is None else f'{ms:.1f}'


def format_tables(rows: List[Row], columns: Sequence[str], threads: Sequence[int],
                  rounds: int) -> str:
    """The latency table, the ratio table (against RegNetX-800MF) and the exports' facts."""
    header = [f'{c} {t}t' for t in threads for c in columns]
    lines = ['Latency, ms per image (batch 1, median of %d interleaved rounds):' % rounds, '',
             '| model, input | ' + ' | '.join(header) + ' |',
             '|---|' + '---:|' * len(header)]
    for row in rows:
        lines.append(f'| {row.label} | '
                     + ' | '.join(_cell(row, c, t) for t in threads for c in columns) + ' |')
    references = {row.block: row for row in rows if row.model == REFERENCE}
    ratio_rows = [row for row in rows if row.block in references and row.model != REFERENCE]
    if ratio_rows:
        lines += ['', f'Against {BENCHMARK_MODELS[REFERENCE][0]} at the same size, in the same '
                  'runtime, precision and threads (below 1.00x: faster):', '',
                  '| model, input | ' + ' | '.join(header) + ' |',
                  '|---|' + '---:|' * len(header)]
        for row in ratio_rows:
            reference = references[row.block]
            cells = []
            for t in threads:
                for c in columns:
                    ours, theirs = row.ms.get((c, t)), reference.ms.get((c, t))
                    cells.append('-' if not ours or not theirs else f'{ours / theirs:.2f}x')
            lines.append(f'| {row.label} | ' + ' | '.join(cells) + ' |')
    export_columns = [c for c in columns if RUNTIME_COLUMNS[c][0] != 'pytorch']
    if export_columns:
        lines += ['', 'The exports: file size (MiB); int8 size against fp32, the int8 file\'s '
                  'SNR against PyTorch float (dB); share of operator nodes XNNPACK runs '
                  '(nodes left to portable kernels; + calls of the project\'s scan kernel):',
                  '',
                  '| model, input | ' + ' | '.join(export_columns) + ' |',
                  '|---|' + '---|' * len(export_columns)]
        for row in rows:
            lines.append(f'| {row.label} | ' + ' | '.join(
                _export_cell(row.exports.get(c)) for c in export_columns) + ' |')
    return '\n'.join(lines) + '\n'


def _export_cell(record: Optional[dict]) -> str:
    if not record:
        return '-'
    parts = [f'{record["file_bytes"] / 2**20:.1f}']
    quantization = record.get('quantization')
    if quantization:
        parts.append(f'{quantization["size_ratio"]:.2f}x, {record.get("snr_db") or 0:.0f} dB')
    delegation = record.get('delegation')
    if delegation:
        parts.append(f'{100 * delegation["share"]:.0f}% ({delegation["portable_nodes"]})'
                     + (f' + {delegation["kernel_nodes"]} scan kernel calls'
                        if delegation.get('kernel_nodes') else ''))
    return '; '.join(parts)


def draw_chart(rows: List[Row], columns: Sequence[str], threads: Sequence[int],
               path: str, title: str) -> None:
    """The latency table as one chart: a panel per thread count, a bar per runtime and row.

    Args:
        rows (list[Row]): the measured rows.
        columns (Sequence[str]): runtime columns, one bar colour each.
        threads (Sequence[int]): one panel each.
        path (str): the PNG to write (atomically).
        title (str): the figure's title.
    """
    import io

    from mmmobilemamba.engine.atomic_io import atomic_write_bytes

    fig = chart_figure(rows, columns, threads, title)  # selects the Agg backend
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


CHART_COLORS = {'pytorch': '#7f7f7f', 'onnxruntime-fp32': '#1f77b4',
                'onnxruntime-int8': '#9ecae1', 'executorch-fp32': '#d62728',
                'executorch-int8': '#fc9272', 'onnxruntime-kernel-fp32': '#9467bd',
                'onnxruntime-kernel-int8': '#c5b0d5', 'executorch-kernel-fp32': '#2ca02c',
                'executorch-kernel-int8': '#a1d99b'}
LEGEND_COLUMNS = 5  # legend entries per line: all nine runtimes fit the figure's width


def chart_figure(rows: List[Row], columns: Sequence[str], threads: Sequence[int], title: str):
    """:func:`draw_chart`'s figure (a matplotlib ``Figure``, Agg backend)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    height = 0.8 / max(len(columns), 1)
    legend_lines = -(-len(columns) // LEGEND_COLUMNS)
    fig_height = 0.42 * len(rows) * len(columns) ** 0.5 + 1.2 + 0.2 * legend_lines
    fig, axes = plt.subplots(1, len(threads), figsize=(4.2 * len(threads) + 1.6, fig_height),
                             sharey=True, squeeze=False)
    labels = [row.label for row in rows]
    for axis, t in zip(axes[0], threads):
        for j, column in enumerate(columns):
            values = [row.ms.get((column, t), 0.0) for row in rows]
            positions = [i + (j - (len(columns) - 1) / 2) * height for i in range(len(rows))]
            axis.barh(positions, values, height=height, color=CHART_COLORS.get(column),
                      label=column if t == threads[0] else None)
        axis.set_xscale('log')
        axis.set_title(f'{t} thread{"s" if t > 1 else ""}', fontsize=9)
        axis.set_xlabel('ms per image (log scale)', fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(axis='x', which='both', alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)))
    axes[0][0].set_yticklabels(labels)
    axes[0][0].invert_yaxis()
    fig.legend(loc='lower center', ncol=min(len(columns), LEGEND_COLUMNS), fontsize=7,
               frameon=False)
    fig.suptitle(title, fontsize=9)
    # the legend's lines below the panels
    fig.tight_layout(rect=(0, (0.05 + 0.2 * legend_lines) / fig_height, 1, 0.95))
    return fig
