"""The train/test command lines (``tools/train.py``, ``tools/test.py``) for mmdet and mmseg configs.

One entry serves both: the config's ``default_scope`` (or the registry knowing its model type)
decides. The steps are mmengine's usual ones (``Config`` + ``--cfg-options`` ->
``Runner.from_cfg``) plus:

* before the runner is built, a pre-flight check (:mod:`.preflight`) stops with one message
  listing every problem it finds: class counts of datasets and heads that disagree, dataset
  files and folders that do not exist, unknown or invalid arguments of our modules,
  backbone/neck channels that do not fit, checkpoint files (``load_from``, the backbone's
  ``init_cfg``) that do not exist, on a GPU an mmcv whose compiled ops are CPU-only while the
  config needs some (NMS, RoIAlign, sigmoid focal loss: named, with the fix);
* the config is made safer (:mod:`.config_rewrites`): ``CheckpointHook`` becomes
  :class:`AtomicCheckpointHook` (same arguments), a :class:`FiniteLossGuardHook` is added when
  the config has none, training pipelines skip broken images with a warning naming them (in
  val/test they stop the run, naming the file: ``LoadImageFromFile`` is
  :class:`~.image_loading.CheckedLoadImageFromFile` in mmdet/mmseg pipelines);
  ``--no-safety-hooks`` keeps the config as written. When ``load_from`` (or ``--resume``)
  brings the backbone's weights, its ImageNet ``init_cfg`` checkpoint is not read;
* the ``load_from`` / tested checkpoint must fit the model exactly (our layout or the
  authors' released files, mapped as they load), else the run stops listing what is missing,
  unexpected or of another shape (exit 2); fine-tuning may only skip class-dependent head
  layers of another ``num_classes``;
* a non-finite loss or a broken image under ``on_error='raise'`` ends the run with its
  message and exit status 1, without a traceback;
* ``--resume`` without a path resumes from the newest *complete* checkpoint of the work dir;
* ``--launcher pytorch`` on a machine without CUDA runs DDP on CPU over gloo;
* ``compile`` (``--cfg-options compile=True`` or a dict of ``torch.compile`` arguments)
  compiles the backbone and the neck in place, not mmengine's whole ``train_step``
  (:mod:`.compile`).
"""
import argparse
import logging
import os
import os.path as osp
import re
import sys
from typing import Callable, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log

from ..models.checkpoint import compare_with_model
from .compile import compile_model_parts, take_compile_option
from .config import ConfigError, detect_codebase, load_config
from .config_rewrites import (apply_safe_image_loading, apply_safety_hooks,
                              skip_backbone_pretrained)
from .dataset_check import ERROR
from .hooks import NonFiniteLossError
from .hooks.atomic_checkpoint_hook import POINTER_FILE
from .image_loading import ImageLoadError
from .model_check import is_class_dependent, mismatch_reason
from .preflight import is_missing_local_file, preflight_problems

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


class LaunchError(RuntimeError):
    """A problem with the command line or the config, reported without a traceback."""


# --------------------------------------------------------------------------------- parsers
def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: cfg.work_dir, else ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.decode_head.num_classes=3 '
                        "train_dataloader.batch_size=4 'model.auxiliary_head.0.num_classes=3'")
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher (tools/dist_*.sh use pytorch)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def build_train_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/train.py``."""
    parser = argparse.ArgumentParser(
        prog='tools/train.py',
        description='Train a detector (mmdet config) or a segmentor (mmseg config).')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume model, optimizer, scheduler and iteration from CHECKPOINT, '
                        'or without a path from the newest complete checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision on CUDA (AmpOptimWrapper: float16 '
                        'autocast, dynamic loss scale); without a GPU the run says so and '
                        'trains in float32')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by total batch size / '
                        'auto_scale_lr.base_batch_size of the config')
    parser.add_argument('--no-safety-hooks', action='store_true',
                        help='keep the config as written: no AtomicCheckpointHook upgrade, no '
                        'FiniteLossGuardHook, broken training images not skipped (a broken '
                        'image still stops the run with its name)')
    _add_common_args(parser)
    return parser


def build_test_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/test.py``."""
    parser = argparse.ArgumentParser(
        prog='tools/test.py',
        description='Evaluate a checkpoint: COCO box/mask AP for detection configs, '
        'mIoU/aAcc for segmentation configs.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', metavar='FILE.pkl',
                        help='also dump the predictions to this pickle file')
    parser.add_argument('--show-dir', help='save images with drawn predictions in this '
                        'directory (mmseg: in its vis_data/vis_image/)')
    parser.add_argument('--show', action='store_true', help='display predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2.0,
                        help='seconds each image is shown with --show')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (needs tta_model and tta_pipeline in '
                        'the config)')
    _add_common_args(parser)
    return parser


# --------------------------------------------------------------------------- configuration
def default_work_dir(cfg: Config, work_dir: Optional[str]) -> str:
    """``--work-dir``, else ``cfg.work_dir``, else ``./work_dirs/<config file stem>``."""
    if work_dir:
        return work_dir
    if cfg.get('work_dir'):
        return cfg.work_dir
    return osp.join('./work_dirs', osp.splitext(osp.basename(cfg.filename))[0])


def _set_launcher(cfg: Config, args: argparse.Namespace) -> None:
    cfg.launcher = args.launcher
    # Old launchers pass the rank as an argument only; mmengine reads the environment.
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))


def enable_amp(cfg: Config) -> None:
    """Switch ``optim_wrapper`` to ``AmpOptimWrapper`` (float16 autocast, dynamic loss scale).

    mmengine's ``AmpOptimWrapper`` needs a GPU: without CUDA the run keeps its float32
    optimiser wrapper and the log says so. (MobileMamba's selective scan runs in float32 under
    autocast either way.)
    """
    if not torch.cuda.is_available():
        print_log('--amp: no CUDA device on this machine, and mixed precision (mmengine\'s '
                  'AmpOptimWrapper: float16 autocast with loss scaling) needs one: this run '
                  'trains in float32', logger='current', level=logging.WARNING)
        return
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind == 'AmpOptimWrapper':
        print_log('AMP is already enabled in the config', logger='current')
        return
    if kind != 'OptimWrapper':
        raise LaunchError(f'--amp needs optim_wrapper.type OptimWrapper, the config has {kind}')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')


def enable_auto_scale_lr(cfg: Config) -> None:
    """Turn on ``auto_scale_lr`` (the config must give ``auto_scale_lr.base_batch_size``)."""
    if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
        raise LaunchError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in '
                          'the config: N is the total batch size its learning rate is for')
    cfg.auto_scale_lr.enable = True


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of ``work_dir``, or ``None``.

    ``last_checkpoint`` is trusted when it names an existing file (AtomicCheckpointHook only
    writes it after its checkpoint is complete). Otherwise (missing or stale pointer, e.g. a
    moved work dir) the ``epoch_N.pth``/``iter_N.pth`` with the largest N is used.
    """
    pointer = osp.join(work_dir, POINTER_FILE)
    if osp.isfile(pointer):
        with open(pointer) as f:
            target = f.read().strip()
        if target and osp.isfile(target):
            return target
        print_log(f'{pointer} names a missing checkpoint ({target!r}); looking for the newest '
                  'one in the work dir', logger='current', level=logging.WARNING)
    if not osp.isdir(work_dir):
        return None
    numbered = []
    for name in os.listdir(work_dir):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            numbered.append((int(match.group(2)), name))
    return osp.join(work_dir, max(numbered)[1]) if numbered else None


def apply_resume(cfg: Config, resume: Optional[str]) -> None:
    """Set ``cfg.resume``/``cfg.load_from`` for ``--resume [CHECKPOINT]``."""
    if resume is None:
        return
    if resume == 'auto':
        checkpoint = find_resume_checkpoint(cfg.work_dir)
        if checkpoint is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir}, training from scratch',
                      logger='current', level=logging.WARNING)
            cfg.resume = False
            return
    else:
        if is_missing_local_file(resume):
            raise LaunchError(f'--resume: checkpoint not found: {resume}')
        checkpoint = resume
    cfg.resume = True
    cfg.load_from = checkpoint


def prepare_cpu_distributed(cfg: Config) -> None:
    """Run ``--launcher pytorch`` without CUDA as DDP on CPU over gloo.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its default DDP wrapper pins
    ``device_ids``, both of which fail without a GPU; we initialise the process group
    ourselves (mmengine then skips its own) and wrap the model with ``device_ids=None``.
    SyncBN layers need GPUs: use BN in configs meant for CPU.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def _is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


def run_preflight_checks(cfg: Config, splits: Sequence[str], training: bool) -> None:
    """Log warnings; raise :class:`LaunchError` listing every error found before a run.

    Args: as :func:`~mmmobilemamba.engine.preflight.preflight_problems`.
    """
    problems = preflight_problems(cfg, splits, training)
    errors = [str(p) for p in problems if p.severity == ERROR]
    warnings = [str(p) for p in problems if p.severity != ERROR]
    if warnings and _is_main_process():
        print_log('\n'.join(warnings), logger='current', level=logging.WARNING)
    if errors:
        raise LaunchError(f'{len(errors)} problem(s) in {cfg.filename or "the config"}, '
                          'nothing was run:\n' + '\n'.join(errors))


def report_load_from(runner, cfg: Config, training: bool = True) -> None:
    """Check that ``load_from`` fits the model exactly, before anything runs.

    Checkpoints in our layout and the authors' released detectors/segmentors (mapped as the
    model maps them when loading) are compared with the model, key by key and shape by shape.

    Args:
        runner: the built runner (its ``model``).
        cfg: the config (``load_from``, ``resume``).
        training: ``tools/train.py``, where fine-tuning may skip the class-dependent head
            layers of another ``num_classes`` (re-initialised, with a warning naming them),
            or ``tools/test.py``, where every tensor must fit.

    Raises:
        LaunchError: listing every missing, unexpected and mismatched tensor, when the
            checkpoint does not fit (mmengine would warn and go on with those layers at their
            initialisation).
    """
    path = cfg.get('load_from')
    if not path or cfg.get('resume') or not osp.isfile(path) or not _is_main_process():
        return
    try:
        report = compare_with_model(runner.model, path)
    except (RuntimeError, ValueError) as err:
        raise LaunchError(f'cannot read the checkpoint {path}: {err}') from err
    lines = report.lines(reason=mismatch_reason)
    if not report.loaded:
        raise LaunchError(
            f'{path} has no tensor that fits this model, nothing would load:\n  ' +
            '\n  '.join(lines) + '\nIs it a checkpoint of another model? A MobileMamba '
            'ImageNet checkpoint goes in model.backbone.init_cfg, not in load_from.')
    tolerated = training and not report.missing and not report.unexpected and all(
        is_class_dependent(key) for key, _, _ in report.mismatched)
    if not report.exact and not tolerated:
        what = 'load_from' if training else 'the checkpoint'
        raise LaunchError(
            f'{what} {path} does not fit this model, nothing was run:\n  ' + '\n  '.join(lines) +
            '\nIs it the checkpoint of another config? (Only fine-tuning with another '
            'num_classes may skip layers: the class-dependent head layers.) To start from '
            'the backbone of a checkpoint only, set model.backbone.init_cfg=dict('
            "type='Pretrained', checkpoint=PATH) instead of load_from.")
    if lines:
        print_log(f'load_from {path}: the class-dependent head layers start from their '
                  'initialisation, the rest loads:\n  ' + '\n  '.join(lines),
                  logger='current', level=logging.WARNING)
    else:
        print_log(f'load_from {path}: every tensor matches the model', logger='current')


def build_runner(cfg: Config):
    """``Runner.from_cfg``, or the registered ``cfg.runner_type``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def prepare_train_config(args: argparse.Namespace) -> Config:
    """The config ``tools/train.py`` runs, with every command-line option applied."""
    cfg = load_config(args.config, args.cfg_options)
    detect_codebase(cfg)  # fail early, clearly, on configs that are neither
    _set_launcher(cfg, args)
    cfg.work_dir = default_work_dir(cfg, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if not args.no_safety_hooks:
        apply_safety_hooks(cfg)
        apply_safe_image_loading(cfg, ('train', 'val', 'test'))
    apply_resume(cfg, args.resume)
    skip_backbone_pretrained(cfg)
    return cfg


def _enable_visualization(cfg: Config, args: argparse.Namespace, codebase: str) -> None:
    hooks = cfg.get('default_hooks') or ConfigDict()
    hook = hooks.get('visualization')
    if hook is None:
        raise LaunchError('--show/--show-dir need default_hooks.visualization in the config')
    hook['draw'] = True
    hook['interval'] = 1
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        # Absolute: mmdet's hook joins a relative test_out_dir onto itself at every iteration.
        show_dir = osp.abspath(args.show_dir)
        if codebase == 'mmdet':
            hook['test_out_dir'] = show_dir
        else:  # mmseg's hook saves through the visualizer (show_dir/vis_data/vis_image/)
            cfg.visualizer['save_dir'] = show_dir


def _enable_tta(cfg: Config) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise LaunchError('--tta needs tta_model and tta_pipeline in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _add_dump_metric(cfg: Config, out: str, codebase: str) -> None:
    if not out.endswith(('.pkl', '.pickle')):
        raise LaunchError(f'--out must end with .pkl or .pickle, got {out}')
    dump = dict(type='DumpDetResults' if codebase == 'mmdet' else 'DumpSegResults',
                out_file_path=out)
    evaluator = cfg.test_evaluator
    cfg.test_evaluator = (list(evaluator) if isinstance(evaluator, (list, tuple))
                          else [evaluator]) + [dump]


def prepare_test_config(args: argparse.Namespace) -> Config:
    """The config ``tools/test.py`` runs, with every command-line option applied."""
    cfg = load_config(args.config, args.cfg_options)
    codebase = detect_codebase(cfg)
    _set_launcher(cfg, args)
    cfg.work_dir = default_work_dir(cfg, args.work_dir)
    if is_missing_local_file(args.checkpoint):
        raise LaunchError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _enable_visualization(cfg, args, codebase)
    if args.tta:
        _enable_tta(cfg)
    apply_safe_image_loading(cfg, ('test',))  # after --tta, which replaces the pipeline
    if args.out:
        _add_dump_metric(cfg, args.out, codebase)
    return cfg


def _report_metrics(metrics: Optional[dict]) -> None:
    # The metrics already print their tables through the runner's logger; this closing line
    # makes the numbers easy to find (and to grep) at the end of a long log.
    if metrics and _is_main_process():
        listing = '  '.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}'
                            for k, v in metrics.items())
        print(f'Evaluation results: {listing}', flush=True)


def _stopped(err: Exception) -> int:
    """Report an expected stop (bad loss, broken image) without a traceback: exit status 1."""
    text = str(err).strip() or type(err).__name__
    # From a DataLoader worker the message carries the worker's traceback, whose last line
    # is ours: '[module.]ImageLoadError: <message>'.
    last = text.splitlines()[-1]
    message = re.sub(rf'^([\w.]*\.)?{type(err).__name__}: ', '', last)
    print(f'error: {message}', file=sys.stderr, flush=True)
    return 1


def _checked_runner(args: argparse.Namespace, prepare: Callable[[argparse.Namespace], Config],
                    splits: Sequence[str], training: bool):
    """The config from ``prepare(args)``, checked, as a runner; None after printing the error.

    Config errors (:class:`LaunchError`: pre-flight problems, a ``load_from`` that does not
    fit; :class:`~.config.ConfigError`; a missing config file) are printed as ``error: ...``
    without a traceback.
    """
    try:
        cfg = prepare(args)
        run_preflight_checks(cfg, splits, training)
        prepare_cpu_distributed(cfg)
        try:
            compile_kwargs = take_compile_option(cfg)
        except ValueError as err:
            raise LaunchError(str(err)) from None
        runner = build_runner(cfg)
        report_load_from(runner, cfg, training)
    except (LaunchError, ConfigError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return None
    if compile_kwargs is not None:
        compile_model_parts(runner.model, compile_kwargs)
    return runner


def _end_distributed() -> None:
    """Destroy the process group a distributed run started (mmengine leaves it), as PyTorch
    asks: left to the interpreter's exit, its communication threads are torn down in no set
    order (one CI run's ``dist_test.sh`` aborted with ``terminate called without an active
    exception``, exit -6)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- entry points
def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/train.py``: returns the exit code: 0 done, 2 config error, 1 stopped (a
    non-finite loss, a broken image under ``on_error='raise'``).

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    args = build_train_parser().parse_args(argv)
    runner = _checked_runner(args, prepare_train_config, ('train', 'val'), training=True)
    if runner is None:
        return 2
    try:
        runner.train()
    except (NonFiniteLossError, ImageLoadError) as err:
        return _stopped(err)
    finally:
        _end_distributed()
    return 0


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/test.py``: returns the exit code: 0 done, 2 config error, 1 a broken image.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    args = build_test_parser().parse_args(argv)
    runner = _checked_runner(args, prepare_test_config, ('test',), training=False)
    if runner is None:
        return 2
    try:
        metrics = runner.test()
    except ImageLoadError as err:
        return _stopped(err)
    finally:
        _end_distributed()
    _report_metrics(metrics)
    return 0
