"""The JSON record beside every exported file: what was exported and what was measured.

``FILE.json`` beside ``FILE.onnx`` / ``FILE.pte`` (the extension replaced). One record per
stem: an export refuses to replace the record of another file (e.g. ``model.onnx``'s when
writing ``model.pte``), so nothing a user had is lost.
"""
import json
import os.path as osp
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

__all__ = ['ExportResult', 'record_path', 'read_record', 'check_record_slot']


def record_path(exported_file: str) -> str:
    """``outputs/model.pte`` -> ``outputs/model.json``.

    Args:
        exported_file (str): the exported file.
    """
    return osp.splitext(str(exported_file))[0] + '.json'


def read_record(exported_file: str) -> dict:
    """The record of ``exported_file``, checked to describe that file.

    Args:
        exported_file (str): an exported ``.onnx`` / ``.pte`` file.

    Raises:
        FileNotFoundError: without a record (it is written by the export tools).
        ValueError: when the record describes another file of the same stem.
    """
    path = record_path(exported_file)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: the record that the export writes beside '
                                f'{exported_file} (kind, input shape, outputs); export again '
                                'with tools/deployment/export_onnx.py or export_executorch.py')
    with open(path) as f:
        meta = json.load(f)
    recorded = meta.get('file', meta.get('onnx_file'))  # 'onnx_file': records before ExecuTorch
    if recorded and osp.basename(recorded) != osp.basename(str(exported_file)):
        raise ValueError(f'{path} describes {osp.basename(recorded)}, not '
                         f'{osp.basename(str(exported_file))}: export each file under its own '
                         'name (e.g. model.onnx and model_xnnpack.pte)')
    meta.setdefault('file', recorded)
    meta.setdefault('runtime', 'onnxruntime')
    meta.setdefault('precision', 'fp32')
    return meta


def check_record_slot(exported_file: str) -> None:
    """Refuse to export ``exported_file`` where its record would replace another file's.

    Args:
        exported_file (str): the file about to be written.

    Raises:
        ValueError: naming the other file and the fix.
    """
    path = record_path(exported_file)
    if not osp.isfile(path):
        return
    try:
        with open(path) as f:
            recorded = json.load(f)
        recorded = recorded.get('file', recorded.get('onnx_file'))
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is None:
        raise ValueError(f'{path} exists and is not an export record: exporting '
                         f'{exported_file} would replace it; choose another output name')
    if osp.basename(recorded) != osp.basename(str(exported_file)):
        raise ValueError(f'{path} is the record of {osp.basename(recorded)}: exporting '
                         f'{exported_file} would replace it; choose another name (e.g. '
                         f'{osp.splitext(str(exported_file))[0]}_2{osp.splitext(str(exported_file))[1]})')


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class ExportResult:
    """What an export wrote and measured (also saved as ``FILE.json`` beside the file).

    Args:
        file (str): the exported file.
        kind (str): 'backbone', 'detector' or 'segmentor'.
        input_shape (list[int]): ``[1, 3, H, W]``: the static input shape.
        input_name (str): the input's name.
        output_names (list[str]): the outputs, in order.
        export_seconds (float): how long the export took (with calibration and lowering).
        runtime (str): 'onnxruntime' or 'executorch'.
        precision (str): 'fp32' or 'int8'.
        file_bytes (int, optional): the file's size.
        config (str, optional): the config file.
        checkpoint (str, optional): the weights (None: random).
        preprocessing (dict): the data preprocessor's settings (mean, std, ...).
        app_preprocessing (dict): what an application does to a camera image before feeding
            it (resize, channel order, normalisation, padding to the static shape).
        max_abs_diff (float, optional): the runtime against PyTorch, with ``verify``.
        max_rel_diff (float, optional): the same, relative (see
            :func:`~mmmobilemamba.deploy.network.compare_outputs`).
        snr_db (float, optional): int8 only: the worst output's signal-to-noise ratio against
            the float model, in dB.
        delegation (dict, optional): ExecuTorch only: which share of the graph's operator
            nodes the XNNPACK delegate runs, the nodes this project's kernels run, and the
            nodes left to portable kernels by op and by module.
        kernels (list[dict], optional): ExecuTorch only: this project's kernels the program
            calls (``operator``, ``source``): a runtime runs the file only with them
            registered (:mod:`~mmmobilemamba.deploy.scan_kernel`).
        rewrites (dict): modules the runtime's form replaced before the export, by kind (the
            same values; e.g. ExecuTorch's wide depthwise convs, see
            :mod:`~mmmobilemamba.deploy.xnnpack_rewrites`).
        quantization (dict, optional): int8 only: scheme, calibration, the parts kept float,
            and size and latency against the fp32 export in the same runtime.
        evaluation (dict, optional): metrics on the config's test set, PyTorch and exported.
        versions (dict): torch and the runtime's package.
    """

    file: str
    kind: str
    input_shape: List[int]
    input_name: str
    output_names: List[str]
    export_seconds: float
    runtime: str = 'onnxruntime'
    precision: str = 'fp32'
    file_bytes: Optional[int] = None
    config: Optional[str] = None
    checkpoint: Optional[str] = None
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    app_preprocessing: Dict[str, Any] = field(default_factory=dict)
    max_abs_diff: Optional[float] = None
    max_rel_diff: Optional[float] = None
    snr_db: Optional[float] = None
    delegation: Optional[Dict[str, Any]] = None
    kernels: Optional[List[Dict[str, str]]] = None
    rewrites: Dict[str, int] = field(default_factory=dict)
    quantization: Optional[Dict[str, Any]] = None
    evaluation: Optional[Dict[str, Any]] = None
    versions: Dict[str, str] = field(default_factory=dict)

    @property
    def onnx_file(self) -> str:
        """The exported file (the name of the field before there were other runtimes)."""
        return self.file

    @property
    def record_file(self) -> str:
        """Where the record is saved."""
        return record_path(self.file)

    def to_dict(self) -> dict:
        """The record as JSON-ready values."""
        return _jsonable(asdict(self))

    def save(self) -> None:
        """Write the record beside the file, atomically."""
        from mmmobilemamba.engine.atomic_io import atomic_write_text
        atomic_write_text(self.record_file, json.dumps(self.to_dict(), indent=1) + '\n')

    @classmethod
    def load(cls, exported_file: str) -> 'ExportResult':
        """The record of ``exported_file`` (see :func:`read_record`).

        Args:
            exported_file (str): an exported file.
        """
        meta = read_record(exported_file)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})

    def summary(self) -> str:
        """A few lines for the console."""
        size = f', {self.file_bytes / 2**20:.2f} MiB' if self.file_bytes else ''
        lines = [f'exported {self.kind} {tuple(self.input_shape)} -> {self.file} '
                 f'({self.runtime}, {self.precision}{size}; {self.export_seconds:.1f} s; '
                 f'outputs: {", ".join(self.output_names)})']
        if self.max_abs_diff is not None:
            lines.append(f'{self.runtime} vs PyTorch: max abs diff {self.max_abs_diff:.3g}, '
                         f'max rel diff {self.max_rel_diff:.3g}'
                         + (f', SNR {self.snr_db:.1f} dB' if self.snr_db is not None else ''))
        if self.rewrites:
            lines.append(f'{self.runtime} form: ' + ', '.join(
                f'{count} {kind}' for kind, count in self.rewrites.items()))
        if self.delegation:
            lines.append(describe_delegation(self.delegation))
        if self.kernels:
            lines.append('needs the kernel(s) ' + ', '.join(
                f'{k["operator"]} ({k["source"]})' for k in self.kernels)
                + ' registered in the runtime')
        if self.quantization:
            lines.append(describe_quantization(self.quantization))
        if self.evaluation:
            lines.append(describe_evaluation(self.evaluation))
        return '\n'.join(lines)


def describe_delegation(delegation: dict) -> str:
    """One paragraph on what XNNPACK took.

    Args:
        delegation (dict): the record's ``delegation`` entry.
    """
    text = (f'XNNPACK runs {delegation["delegated_nodes"]} of {delegation["total_nodes"]} '
            f'operator nodes ({100 * delegation["share"]:.1f}%) in '
            f'{delegation["delegate_calls"]} delegate calls; '
            + (f'{delegation["kernel_nodes"]} run by this project\'s kernels ('
               + ', '.join(f'{op} x{n}' for op, n in delegation['kernel_ops'].items()) + '); '
               if delegation.get('kernel_nodes') else '')
            + f'{delegation["portable_nodes"]} left to portable kernels')
    if delegation['portable_ops']:
        ops = ', '.join(f'{op} x{n}' for op, n in delegation['portable_ops'].items())
        text += f': {ops}'
        modules = ', '.join(f'{m} x{n}' for m, n in
                            list(delegation['portable_by_module'].items())[:8])
        text += f'\n  in {modules}'
    return text


def describe_quantization(quantization: dict) -> str:
    """One paragraph on the int8 file against fp32.

    Args:
        quantization (dict): the record's ``quantization`` entry.
    """
    lines = [f'int8 ({quantization["scheme"]}), calibrated on '
             f'{quantization["calibration"]["images"]} images '
             f'({quantization["calibration"]["source"]})']
    if quantization.get('kept_float'):
        lines.append('  kept float: ' + '; '.join(
            f'{part} ({info["nodes"]} nodes in {info["modules"]} modules)'
            for part, info in quantization['kept_float'].items()))
    lines.append(f'  size {quantization["bytes"] / 2**20:.2f} MiB against fp32 '
                 f'{quantization["fp32_bytes"] / 2**20:.2f} MiB '
                 f'({quantization["size_ratio"]:.2f}x)')
    latency = quantization.get('latency_ms')
    if latency:
        lines.append(f'  latency {latency["int8"]:.2f} ms against fp32 {latency["fp32"]:.2f} ms '
                     f'({latency["fp32"] / latency["int8"]:.2f}x faster; median of '
                     f'{latency["rounds"]} interleaved runs, {latency["threads"]} threads)')
    return '\n'.join(lines)


def describe_evaluation(evaluation: dict) -> str:
    """One line per model evaluated on the test set.

    Args:
        evaluation (dict): the record's ``evaluation`` entry.
    """
    key = evaluation['metric']
    lines = [f'{key} on {evaluation["images"]} test images ({evaluation["dataset"]}):']
    for name, metrics in evaluation['metrics'].items():
        lines.append(f'  {name}: {metrics.get(key)}')
    return '\n'.join(lines)
