"""The config's data for deployment: calibration images for int8 exports, and the test set's
metrics through an exported file.

Calibration takes the first of N evenly spaced images of the training split, loaded with the
*test* pipeline (resized as at test time, no augmentation) and the model's data preprocessor,
and fitted to the export's static shape as an application would feed them (resized to fit
when larger, padded with zeros at the bottom and right as the preprocessor pads).
"""
import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['calibration_images', 'evaluate', 'fit_to_shape', 'primary_metric']

# the metric an export is judged by, per codebase, and its scale to "points" (percent)
PRIMARY_METRICS = {'mmdet': ('coco/bbox_mAP', 100.0), 'mmseg': ('mIoU', 1.0)}


def primary_metric(scope: str) -> Tuple[str, float]:
    """``(metric key, factor to points)``: box mAP for mmdet (0-1), mIoU for mmseg (0-100).

    Args:
        scope (str): 'mmdet' or 'mmseg'.
    """
    return PRIMARY_METRICS[scope]


def fit_to_shape(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A preprocessed ``(1, 3, h, w)`` image as ``(1, 3, H, W)``: shrunk (keeping its aspect
    ratio) when larger, then zero-padded at the bottom and right.

    Args:
        image (Tensor): one preprocessed image.
        shape (Sequence[int]): ``(H, W)``.
    """
    height, width = (int(s) for s in shape)
    h, w = image.shape[-2:]
    if h > height or w > width:
        scale = min(height / h, width / w)
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
        image = F.interpolate(image, size=(h, w), mode='bilinear', align_corners=False)
    return F.pad(image, (0, width - w, 0, height - h))


def _dataset_cfg(cfg, split: str) -> dict:
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not loader.get('dataset'):
        raise ValueError(f'the config has no {split}_dataloader.dataset: calibration reads '
                         'the training images with the test pipeline')
    dataset = copy.deepcopy(loader['dataset'])
    while 'pipeline' not in dataset and isinstance(dataset.get('dataset'), dict):
        dataset = dataset['dataset']  # RepeatDataset & co.: the dataset they wrap
    return dataset


def calibration_images(cfg, model: nn.Module, num_images: int,
                       shape: Sequence[int]) -> Tuple[List[torch.Tensor], str]:
    """``num_images`` preprocessed training images of the config, fitted to ``shape``.

    Args:
        cfg (Config): the detection/segmentation config.
        model (nn.Module): its model (for the data preprocessor).
        num_images (int): how many images (evenly spaced over the training split).
        shape (Sequence[int]): the export's ``(H, W)``.

    Returns:
        tuple: the images ``(1, 3, H, W)`` float32 (fewer when the split is smaller), and
        where they came from.

    Raises:
        FileNotFoundError: when the dataset's files are missing (with how to get the demo
            data or point the config elsewhere).
    """
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    from mmmobilemamba.engine.config import detect_codebase, get_registry

    if num_images < 1:
        raise ValueError(f'--calib-images must be at least 1, got {num_images}')
    scope = detect_codebase(cfg)
    init_default_scope(scope)
    dataset_cfg = _dataset_cfg(cfg, 'train')
    dataset_cfg['pipeline'] = _dataset_cfg(cfg, 'test')['pipeline']
    dataset_cfg.pop('indices', None)
    try:
        dataset = get_registry(scope, 'DATASETS').build(dataset_cfg)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f'int8 calibration reads the config\'s training images, which are missing ({err}). '
            'For the quickstart configs generate the demo data: python '
            'tools/misc/generate_demo_data.py; for another data set set '
            'train_dataloader.dataset.data_root with --cfg-options') from err
    if len(dataset) == 0:
        raise ValueError('the training split of the config is empty: nothing to calibrate on')
    count = min(num_images, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
    images = []
    with torch.no_grad():
        for index in indices:
            data = model.data_preprocessor(pseudo_collate([dataset[index]]), False)
            images.append(fit_to_shape(data['inputs'].float().cpu(), shape))
    root = dataset_cfg.get('data_root', '') or type(dataset).__name__
    return images, f'evenly spaced over the {len(dataset)} training images of {root}'


def evaluate(test_step: Callable[[dict], list], cfg,
             max_images: Optional[int] = None) -> Tuple[Dict[str, float], int]:
    """The config's test metrics of ``test_step`` (a model's, or an exported file's).

    Args:
        test_step (callable): takes a dataloader batch, returns data samples with predictions.
        cfg (Config): the config (its test dataloader and evaluator).
        max_images (int, optional): evaluate the first images only.

    Returns:
        tuple: the metrics and the number of images.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from mmmobilemamba.engine.config import detect_codebase

    init_default_scope(detect_codebase(cfg))
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    count = 0
    for batch in loader:
        if max_images is not None and count >= max_images:
            break
        evaluator.process(test_step(batch), batch)
        count += 1
    metrics = evaluator.evaluate(count)
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}, count
