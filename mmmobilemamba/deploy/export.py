"""The export path every runtime shares: prepare (fold), export, quantise, run, verify, record.

:func:`export_network` exports a model given as a module and an input; :func:`export_config`
builds the model of a config (with a checkpoint), its preprocessed input, the calibration
images of an int8 export and, with ``evaluate``, the test-set metrics through the written file.
The runtime-specific steps are :class:`~mmmobilemamba.deploy.runtime.Runtime`'s.

The file and its record are written atomically once everything before succeeded (a failed
export leaves what was there), and an export never replaces the record of another file.
"""
import contextlib
import os.path as osp
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .network import (ExportedNetwork, compare_outputs, reference_outputs,
                      signal_to_noise_db)
from .quantization import DEFAULT_FLOAT_PARTS, FloatParts
from .record import ExportResult, check_record_slot
from .runtime import Runtime, get_runtime
from .timing import interleaved_latency

__all__ = ['QUANTIZE_MODES', 'UnsupportedModelError', 'app_preprocessing', 'export_config',
           'export_network']

QUANTIZE_MODES = ('int8', )
DEFAULT_CALIB_IMAGES = 32


class UnsupportedModelError(ValueError):
    """A part of the model that the exporter cannot take; the message names the module."""


@contextlib.contextmanager
def name_the_failing_module(root: nn.Module, runtime: Runtime, kind: str,
                            quantize: Optional[str]) -> Iterator[None]:
    """Turn an exporter's failure into an error that names the module it failed in (the
    innermost one running when it failed) and the options that avoid it.

    Args:
        root (nn.Module): the exported network.
        runtime (Runtime): for the message.
        kind (str): what was exported, for the advice.
        quantize (str, optional): the quantisation asked for, for the advice.
    """
    running: List[Tuple[str, str]] = []

    def enter(module: nn.Module, args, name: str) -> None:
        # paths as in the model given (the exported network wraps it as ``model``)
        running.append((name.removeprefix('model.') or 'the model', type(module).__name__))

    def leave(module: nn.Module, args, output) -> None:  # None: the output is kept
        if running:
            running.pop()

    handles = []
    for name, module in root.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name: enter(m, args, name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:
        where = (f'in {running[-1][0]} ({running[-1][1]})' if running
                 else 'after tracing (lowering or serialising the graph)')
        advice = []
        if kind != 'backbone':
            advice.append('--backbone-only exports the backbone alone')
        if quantize:
            advice.append('without --quantize the float export')
        raise UnsupportedModelError(
            f'{runtime.name} export failed {where}: {type(err).__name__}: '
            f'{str(err).strip().splitlines()[0] if str(err).strip() else ""}'
            + (f' ({"; ".join(advice)})' if advice else '')) from err
    finally:
        for handle in handles:
            handle.remove()


def _check_inputs(inputs: torch.Tensor) -> torch.Tensor:
    inputs = inputs.detach().float().cpu().contiguous()
    if inputs.dim() != 4 or inputs.shape[:2] != (1, 3):
        raise ValueError(f'inputs must be one preprocessed image (1, 3, H, W), got '
                         f'{tuple(inputs.shape)}')
    return inputs


def export_network(model: nn.Module, kind: str, inputs: torch.Tensor, out_file: str,
                   runtime: str = 'onnxruntime', verify: bool = False,
                   quantize: Optional[str] = None,
                   calibration: Optional[Sequence[torch.Tensor]] = None,
                   calibration_source: str = 'images given',
                   float_parts: Sequence[str] = DEFAULT_FLOAT_PARTS,
                   config: Optional[str] = None, checkpoint: Optional[str] = None,
                   preprocessing: Optional[dict] = None,
                   app_preprocessing: Optional[dict] = None,
                   verify_inputs: Optional[torch.Tensor] = None,
                   latency_rounds: int = 10,
                   runtime_options: Optional[dict] = None) -> ExportResult:
    """Export ``model`` for ``runtime``, for inputs like ``inputs``; write the file and record.

    Args:
        model (nn.Module): the model with its weights, in eval mode; it is not modified (a
            folded copy is exported).
        kind (str): 'backbone', 'detector' or 'segmentor' (see :mod:`.network`).
        inputs (Tensor): a preprocessed input ``(1, 3, H, W)``; fixes the input shape.
        out_file (str): where to write (``.onnx`` for onnxruntime, ``.pte`` for ExecuTorch);
            ``<out_file without extension>.json`` is the record.
        runtime (str): 'onnxruntime' or 'executorch'. Default: 'onnxruntime'.
        verify (bool): run the written network in the runtime (CPU) on ``inputs`` and compare
            with the unfolded PyTorch model; for int8 also time it against the float export.
        quantize (str, optional): 'int8': post-training static quantisation.
        calibration (Sequence[Tensor], optional): preprocessed images shaped like ``inputs``
            (needed with ``quantize``).
        calibration_source (str): where the calibration images came from, for the record.
        float_parts (Sequence[str]): with ``quantize``, the parts of MobileMamba kept float
            (see :mod:`.quantization`). Default: the scan.
        config (str, optional): recorded.
        checkpoint (str, optional): recorded.
        preprocessing (dict, optional): the data preprocessor's settings, recorded.
        app_preprocessing (dict, optional): what an application applies, recorded (see
            :func:`app_preprocessing`).
        verify_inputs (Tensor, optional): the image ``verify`` runs on, shaped like
            ``inputs`` (default: ``inputs``); an int8 export is best checked on a real image
            that calibration did not see.
        latency_rounds (int): interleaved rounds of the int8 against float timing. Default: 10.
        runtime_options (dict, optional): the runtime's own options (ExecuTorch:
            ``scan_kernel=True``, SS2D's scans by this project's kernel).

    Returns:
        ExportResult: what was written and measured.
    """
    backend = get_runtime(runtime, **(runtime_options or {}))
    backend.require()
    if osp.splitext(str(out_file))[1] != backend.suffix:
        raise ValueError(f'{out_file}: a {backend.name} export is a {backend.suffix} file')
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f'quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}')
    if quantize and not calibration:
        raise ValueError('an int8 export needs calibration images (calibration=[...] or '
                         '--calib-images N of the config\'s data set)')
    inputs = _check_inputs(inputs)
    for image in calibration or ():
        if tuple(image.shape) != tuple(inputs.shape):
            raise ValueError(f'calibration images must be shaped like the input '
                             f'{tuple(inputs.shape)}, got {tuple(image.shape)}')
    if verify_inputs is not None:
        verify_inputs = _check_inputs(verify_inputs)
        if verify_inputs.shape != inputs.shape:
            raise ValueError(f'verify_inputs must be shaped like the input '
                             f'{tuple(inputs.shape)}, got {tuple(verify_inputs.shape)}')
    check_record_slot(out_file)
    network, references = reference_outputs(model, kind, inputs)
    names = network.output_names(references)
    rewrites = backend.adapt(network)

    start = time.perf_counter()
    with name_the_failing_module(network, backend, kind, quantize), torch.no_grad():
        float_export = backend.export(network, inputs, names)
        exported, parts = float_export, None
        if quantize:
            parts = FloatParts(float_parts)
            exported = backend.quantize(network, inputs, names, float_export,
                                        [c.float().cpu().contiguous() for c in calibration],
                                        parts)
        float_export = backend.finalize(float_export)
        exported = backend.finalize(exported) if quantize else float_export
    result = ExportResult(
        file=str(out_file), kind=kind, input_shape=list(inputs.shape), input_name='input',
        output_names=names, export_seconds=time.perf_counter() - start, runtime=backend.name,
        precision=quantize or 'fp32', file_bytes=len(exported.data), rewrites=rewrites,
        config=config, checkpoint=checkpoint, preprocessing=dict(preprocessing or {}),
        app_preprocessing=dict(app_preprocessing or {}), versions=backend.versions(),
        **exported.record)
    if quantize:
        result.quantization = dict(
            scheme='int8 static: weights symmetric per output channel, activations per '
                   'tensor (calibrated min/max, histogram for ExecuTorch)',
            calibration=dict(images=len(calibration), source=calibration_source),
            kept_float=parts.report(), bytes=len(exported.data),
            fp32_bytes=len(float_export.data),
            size_ratio=len(exported.data) / len(float_export.data))
    if verify:
        if verify_inputs is not None:
            with torch.no_grad():
                references = ExportedNetwork(model, kind, inputs.shape[2:]).eval()(verify_inputs)
            inputs = verify_inputs
        session = backend.load(exported.data)
        outputs = session.run(inputs)
        result.max_abs_diff, result.max_rel_diff = compare_outputs(outputs, references)
        if quantize:
            result.snr_db = signal_to_noise_db(outputs, references)
            float_session = backend.load(float_export.data)
            result.quantization['fp32_max_rel_diff'] = compare_outputs(
                float_session.run(inputs), references)[1]
            latency = interleaved_latency({'fp32': lambda: float_session.run(inputs),
                                           'int8': lambda: session.run(inputs)},
                                          rounds=latency_rounds)
            result.quantization['latency_ms'] = dict(latency, rounds=latency_rounds,
                                                     threads=session.threads)
    from mmmobilemamba.engine.atomic_io import atomic_write_bytes
    atomic_write_bytes(out_file, exported.data)
    result.save()
    return result


def app_preprocessing(cfg, input_shape: Sequence[int]) -> Dict:
    """What an application does to a camera image before feeding the exported file, from the
    config's test pipeline and data preprocessor.

    Args:
        cfg (Config): the detection/segmentation config.
        input_shape (Sequence[int]): the export's ``[1, 3, H, W]``.
    """
    preprocessor = cfg.model.get('data_preprocessor', {})
    pipeline = (cfg.get('test_dataloader') or {}).get('dataset', {}).get('pipeline', [])
    resize = next((dict(step) for step in pipeline
                   if isinstance(step, dict) and 'Resize' in str(step.get('type', ''))), None)
    rgb = bool(preprocessor.get('bgr_to_rgb', False))  # else the loaded BGR order is kept
    height, width = input_shape[2:]
    return dict(
        input=dict(name='input', shape=list(input_shape), dtype='float32', layout='NCHW'),
        decoded_image_order='BGR (as mmcv reads files)',
        channel_order='RGB' if rgb else 'BGR',
        resize=None if resize is None else {k: v for k, v in resize.items() if k != 'type'},
        mean=list(preprocessor.get('mean') or [0.0, 0.0, 0.0]),
        std=list(preprocessor.get('std') or [1.0, 1.0, 1.0]),
        normalise='(pixel - mean) / std per channel, in channel_order, pixels 0-255',
        pad=dict(to=[height, width], value=0.0, where='bottom and right, after normalising '
                 '(0 is the mean colour)'),
    )


def export_config(config, checkpoint: Optional[str] = None,
                  shape: Optional[Tuple[int, int]] = None, out_file: str = 'model.onnx',
                  backbone_only: bool = False, verify: bool = False,
                  cfg_options: Optional[dict] = None, runtime: Optional[str] = None,
                  quantize: Optional[str] = None, calib_images: int = DEFAULT_CALIB_IMAGES,
                  float_parts: Sequence[str] = DEFAULT_FLOAT_PARTS,
                  evaluate: bool = False,
                  runtime_options: Optional[dict] = None) -> ExportResult:
    """Export the detector/segmentor of a config (or only its backbone).

    Args:
        config (str | Path | Config): a detection or segmentation config.
        checkpoint (str, optional): its weights (our layout or the authors' released files);
            None exports random weights.
        shape (tuple[int, int], optional): image ``(H, W)``; the input is this image after the
            config's data preprocessor (padded as at test time). Default: 800x1280 for
            detection, 512x512 for segmentation.
        out_file (str): the output file (``.onnx`` or ``.pte``).
        backbone_only (bool): export the backbone alone (deploy-folded), its weights from the
            checkpoint's ``backbone.`` entries, or its bare keys when it holds a backbone alone
            (every backbone tensor must be there; other keys are ignored).
        verify (bool): compare the runtime with PyTorch on the same input.
        cfg_options (dict, optional): config overrides (``--cfg-options``).
        runtime (str, optional): 'onnxruntime' or 'executorch'; None: from ``out_file``'s
            extension.
        quantize (str, optional): 'int8'.
        calib_images (int): with ``quantize``, how many training images calibrate it.
        float_parts (Sequence[str]): with ``quantize``, the parts of MobileMamba kept float.
        evaluate (bool): evaluate the written file on the config's test set (through the
            runtime, with mmdet's/mmseg's post-processing) next to the PyTorch model; the
            metrics go into the record.
        runtime_options (dict, optional): see :func:`export_network`.

    Returns:
        ExportResult: see :func:`export_network`.
    """
    from mmmobilemamba.apis import build_model, detect_codebase, load_config
    from mmmobilemamba.datasets.dummy_batch import DEFAULT_SHAPES, make_dummy_batch, preprocess
    from mmmobilemamba.models import MobileMamba
    from mmmobilemamba.models.checkpoint import load_backbone_checkpoint

    if runtime is None:
        runtime = 'executorch' if str(out_file).endswith('.pte') else 'onnxruntime'
    if evaluate and backbone_only:
        raise ValueError('--evaluate needs a detector or segmentor: a backbone alone '
                         'predicts nothing (drop --backbone-only)')
    check_record_slot(out_file)  # before minutes of work
    get_runtime(runtime, **(runtime_options or {})).require()
    cfg = load_config(config, cfg_options)
    scope = detect_codebase(cfg)
    # With backbone_only the whole model only preprocesses the dummy input and its weights
    # are not exported: the checkpoint has to fit the backbone alone (loaded below), not the
    # neck and heads a backbone-only file lacks.
    model = build_model(cfg, checkpoint=None if backbone_only else checkpoint)
    inputs = preprocess(model, make_dummy_batch(scope, shape or DEFAULT_SHAPES[scope]))['inputs']
    preprocessing = {k: v for k, v in cfg.model.get('data_preprocessor', {}).items()
                     if k != '_scope_'}
    calibration, source, verify_inputs = None, 'images given', None
    if quantize:
        from .data import calibration_images
        # one image more, held out: the int8 file is verified on a real image it was not
        # calibrated on (random pixels are not what calibration prepared it for)
        calibration, source = calibration_images(cfg, model, calib_images + 1,
                                                 inputs.shape[2:])
        if len(calibration) > 1:
            calibration, verify_inputs = calibration[:-1], calibration[-1]
    if backbone_only:
        backbone_cfg = {k: v for k, v in cfg.model.backbone.items()
                        if k not in ('type', 'init_cfg', '_scope_')}
        network, kind = MobileMamba(**backbone_cfg).eval(), 'backbone'
        if checkpoint is not None:
            # the "backbone.*" tensors of a whole model, else a backbone's own keys (ours or
            # the authors' release); every tensor of the backbone must be there
            load_backbone_checkpoint(network, str(checkpoint), require_all=True)
    else:
        network, kind = model, 'detector' if scope == 'mmdet' else 'segmentor'
    result = export_network(
        network, kind, inputs, out_file, runtime=runtime, verify=verify, quantize=quantize,
        calibration=calibration, calibration_source=source, float_parts=float_parts,
        config=str(getattr(cfg, 'filename', None) or config),
        checkpoint=None if checkpoint is None else str(checkpoint),
        preprocessing=preprocessing, app_preprocessing=app_preprocessing(cfg, inputs.shape),
        verify_inputs=verify_inputs, runtime_options=runtime_options)
    if evaluate:
        result.evaluation = evaluate_export(model, cfg, result)
        result.save()
    return result


def evaluate_export(model: nn.Module, cfg, result: ExportResult,
                    max_images: Optional[int] = None) -> Dict:
    """The config's test metrics of the PyTorch model and of the written file.

    Args:
        model (nn.Module): the PyTorch detector/segmentor.
        cfg (Config): its config.
        result (ExportResult): the export (its file is read).
        max_images (int, optional): evaluate the first images only.
    """
    from mmmobilemamba.engine.config import detect_codebase
    from .data import evaluate, primary_metric
    from .runtime_model import model_class

    scope = detect_codebase(cfg)
    exported = model_class(result.runtime)(model, result.file, pad_to_input_shape=True)
    ours, count = evaluate(model.test_step, cfg, max_images)
    theirs, _ = evaluate(exported.test_step, cfg, max_images)
    metric, points = primary_metric(scope)
    root = cfg.test_dataloader.dataset.get('data_root', '')
    return dict(dataset=f'{root} (test split)', images=count, metric=metric,
                points_per_unit=points,
                metrics={'pytorch fp32': ours, f'{result.runtime} {result.precision}': theirs})
