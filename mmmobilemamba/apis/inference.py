"""Configs to models, and the image demo through mmdet's / mmseg's inferencers.

Configs are read and told apart (detection or segmentation) by
:mod:`mmmobilemamba.engine.config`; checkpoints load through mmengine, with the authors'
layouts mapped by the modules themselves (:mod:`mmmobilemamba.models.checkpoint`).
"""
import copy
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch.nn as nn
from mmengine.config import Config
from PIL import Image

from mmmobilemamba.engine.config import detect_codebase, get_registry, load_config

__all__ = ['build_model', 'run_demo']

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


def build_model(cfg: Config, checkpoint: Optional[PathLike] = None,
                device: str = 'cpu') -> nn.Module:
    """Build ``cfg.model`` in eval mode on ``device``, with weights from ``checkpoint``.

    Args:
        cfg (Config): a detection or segmentation config.
        checkpoint (str | Path, optional): weights to load (our layout or the authors'
            released files), every tensor of the model and nothing else. If None the weights
            are PyTorch's defaults: ``init_weights`` is not run, as it may want pretrained
            files.
        device (str): device to put the model on, e.g. 'cpu' or 'cuda:0'. Default: 'cpu'.

    Returns:
        nn.Module: the detector or segmentor, SyncBN replaced by BN (single process).

    Raises:
        ValueError: when the checkpoint does not fit the model; the message lists the missing,
            unexpected and mis-shaped tensors.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from mmmobilemamba.models.checkpoint import compare_with_model

    scope = detect_codebase(cfg)
    init_default_scope(scope)
    model = get_registry(scope, 'MODELS').build(cfg.model)
    if checkpoint is not None:
        path = str(_existing_file(checkpoint, 'checkpoint'))
        report = compare_with_model(model, path)
        if not report.exact:
            raise ValueError(f'checkpoint {path} does not fit the model of the config:\n  ' +
                             '\n  '.join(report.lines()))
        load_checkpoint(model, path, map_location='cpu', logger='current')
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
        out_dir (str | Path): output folder; the drawing is saved as ``out_dir/vis/<image name>``
            and the predictions in ``out_dir/preds/``: ``<image stem>.json`` (mmdet's labels,
            scores, boxes, every score) or ``<image stem>.png`` (mmseg's label map).
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
    scope = detect_codebase(cfg)
    cfg = _demo_config(cfg, scope)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=str(checkpoint), device=device,
                                   show_progress=False)
        inferencer(str(image), out_dir=str(out_dir), pred_score_thr=score_thr,
                   no_save_pred=False)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=str(checkpoint), device=device)
        _use_checkpoint_classes(inferencer)
        label_map = inferencer(str(image), out_dir=str(out_dir), img_out_dir='vis')['predictions']
        (out_dir / 'preds').mkdir(exist_ok=True)
        dtype = np.uint8 if label_map.max() < 256 else np.uint16  # 16-bit PNG beyond 256 classes
        Image.fromarray(label_map.astype(dtype)).save(out_dir / 'preds' / f'{image.stem}.png')
    out_file = out_dir / 'vis' / image.name
    if not out_file.is_file():
        raise RuntimeError(f'the {scope} inferencer did not write {out_file}')
    return out_file
