"""Configs to models, and the image demo through mmdet's / mmseg's inferencers.

A config is a detection config when its ``default_scope`` is ``'mmdet'`` and a segmentation
config when it is ``'mmseg'``; without a ``default_scope`` the registry that knows
``model.type`` decides.
"""
import copy
import importlib
from pathlib import Path
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config

__all__ = ['SCOPES', 'load_config', 'config_scope', 'build_model', 'run_demo']

SCOPES = ('mmdet', 'mmseg')
PathLike = Union[str, Path]

# Used when a config has no ``visualizer`` entry (the inferencers need one).
_DEFAULT_VISUALIZERS = {
    'mmdet': dict(type='DetLocalVisualizer', name='visualizer'),
    'mmseg': dict(type='SegLocalVisualizer', name='visualizer'),
}


def _existing_file(path: PathLike, what: str) -> Path:
    """``path`` as a Path, or a FileNotFoundError that says what was expected there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} not found: {path}')
    return path


def load_config(config: Union[PathLike, Config], cfg_options: Optional[dict] = None) -> Config:
    """Read a config file (or copy a Config) and apply ``--cfg-options`` style overrides.

    Args:
        config (str | Path | Config): path of a config file, or a loaded config.
        cfg_options (dict, optional): overrides in ``Config.merge_from_dict`` form, e.g.
            ``{'model.backbone.arch': 't2'}``.

    Returns:
        Config: a config of its own (the input is never modified).
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        cfg = Config.fromfile(str(_existing_file(config, 'config file')))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _models_registry(scope: str):
    """``<scope>.registry.MODELS`` with ``<scope>.models`` imported so that it is filled."""
    registry = importlib.import_module(f'{scope}.registry').MODELS
    importlib.import_module(f'{scope}.models')
    return registry


def config_scope(cfg: Config) -> str:
    """Whether ``cfg`` is an mmdet (detection) or mmseg (segmentation) config.

    Args:
        cfg (Config): a loaded config with a ``model`` entry.

    Returns:
        str: ``'mmdet'`` or ``'mmseg'``.
    """
    scope = cfg.get('default_scope')
    if scope in SCOPES:
        return scope
    if scope is not None:
        raise ValueError(f'default_scope={scope!r} is not supported; use one of {SCOPES}')
    model_type = (cfg.get('model') or {}).get('type')
    if model_type is None:
        raise ValueError('the config has neither a default_scope nor a model.type')
    for candidate in SCOPES:
        try:
            registry = _models_registry(candidate)
        except ImportError:  # that library is not installed
            continue
        if model_type in registry.module_dict:
            return candidate
    raise ValueError(f'model.type={model_type!r} is in neither the mmdet nor the mmseg '
                     "registry; set default_scope = 'mmdet' or 'mmseg' in the config")


def _register_checkpoint_globals() -> None:
    # mmengine checkpoints pickle a few non-tensor objects that torch.load(weights_only=True)
    # refuses unless they are allow-listed
    from mmmobilemamba.engine.checkpoint_safety import register_checkpoint_safe_globals
    register_checkpoint_safe_globals()


def build_model(cfg: Config, checkpoint: Optional[PathLike] = None,
                device: str = 'cpu') -> nn.Module:
    """Build ``cfg.model`` in eval mode on ``device``, with weights from ``checkpoint``.

    Args:
        cfg (Config): a detection or segmentation config (see :func:`config_scope`).
        checkpoint (str | Path, optional): weights to load. If None the weights are PyTorch's
            defaults: ``init_weights`` is not run, as it may want pretrained files.
        device (str): device to put the model on, e.g. 'cpu' or 'cuda:0'. Default: 'cpu'.

    Returns:
        nn.Module: the detector or segmentor, SyncBN replaced by BN (single process).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    import mmmobilemamba.models  # noqa: F401  (registers MobileMamba and its neck)

    scope = config_scope(cfg)
    init_default_scope(scope)
    model = _models_registry(scope).build(cfg.model)
    if checkpoint is not None:
        _register_checkpoint_globals()
        load_checkpoint(model, str(_existing_file(checkpoint, 'checkpoint')),
                        map_location='cpu', logger='current')
    model = revert_sync_batchnorm(model)
    return model.to(device).eval()


def _demo_config(cfg: Config, scope: str) -> Config:
    """Check what the inferencers need from ``cfg``; add a default visualizer if missing."""
    try:
        cfg.test_dataloader.dataset.pipeline
    except AttributeError:
        raise ValueError('the demo needs the test pipeline: the config has no '
                         'test_dataloader.dataset.pipeline') from None
    if cfg.get('visualizer') is None:
        cfg.visualizer = copy.deepcopy(_DEFAULT_VISUALIZERS[scope])
    return cfg


def _use_checkpoint_classes(inferencer) -> None:
    """Draw with the checkpoint's classes and palette.

    MMSegInferencer gives its visualizer Cityscapes' classes unless told otherwise, even when
    the checkpoint names its own; a checkpoint without a consistent pair keeps that default.
    """
    meta = getattr(inferencer.model, 'dataset_meta', None) or {}
    classes, palette = meta.get('classes'), meta.get('palette')
    if classes and palette and len(classes) == len(palette):
        inferencer.visualizer.set_dataset_meta(list(classes), [list(c) for c in palette])


def run_demo(image: PathLike, config: Union[PathLike, Config], checkpoint: PathLike,
             out_dir: PathLike, device: str = 'cpu', score_thr: float = 0.3) -> Path:
    """Predict on one image and save the drawing: boxes/masks or a segmentation overlay.

    Detection configs go through ``mmdet.apis.DetInferencer``, segmentation configs through
    ``mmseg.apis.MMSegInferencer``.

    Args:
        image (str | Path): the input image.
        config (str | Path | Config): a detection or segmentation config.
        checkpoint (str | Path): the model weights.
        out_dir (str | Path): output folder; the drawing is saved as ``out_dir/vis/<image name>``.
        device (str): inference device, e.g. 'cpu' or 'cuda:0'. Default: 'cpu'.
        score_thr (float): detections scoring below this are not drawn (detection only).
            Default: 0.3.

    Returns:
        Path: the saved drawing.

    Raises:
        FileNotFoundError: when the image, config or checkpoint does not exist.
        mmmobilemamba.engine.ImageLoadError: when the image cannot be decoded.
    """
    image = _existing_file(image, 'image')
    checkpoint = _existing_file(checkpoint, 'checkpoint')
    from mmmobilemamba.engine.image_loading import load_image
    load_image(str(image))  # a broken file: ImageLoadError naming it, not a decoder traceback
    cfg = load_config(config)
    scope = config_scope(cfg)
    cfg = _demo_config(cfg, scope)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import mmmobilemamba.models  # noqa: F401  (registers MobileMamba and its neck)
    _register_checkpoint_globals()
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=str(checkpoint), device=device,
                                   show_progress=False)
        inferencer(str(image), out_dir=str(out_dir), pred_score_thr=score_thr)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=str(checkpoint), device=device)
        _use_checkpoint_classes(inferencer)
        inferencer(str(image), out_dir=str(out_dir), img_out_dir='vis')
    out_file = out_dir / 'vis' / image.name
    if not out_file.is_file():
        raise RuntimeError(f'the {scope} inferencer did not write {out_file}')
    return out_file
