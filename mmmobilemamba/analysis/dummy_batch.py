"""A synthetic one-image batch, as a dataloader would give it, for analysis without data."""
from typing import Tuple

import torch

__all__ = ['DEFAULT_SHAPES', 'make_dummy_batch', 'preprocess']

# (H, W) analysed when none is given: mmdet's usual 1280x800 and a 512x512 ADE20K crop
DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 512)}


def _data_sample(scope: str, shape: Tuple[int, int]):
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        raise ValueError(f"scope must be 'mmdet' or 'mmseg', got {scope!r}")
    sample = Sample()
    sample.set_metainfo(dict(img_path='dummy.jpg', ori_shape=shape, img_shape=shape,
                             pad_shape=shape, scale_factor=(1.0, 1.0), flip=False))
    return sample


def make_dummy_batch(scope: str, shape: Tuple[int, int], batch_size: int = 1,
                     seed: int = 0) -> dict:
    """Random uint8 images with their data samples, in the form of a test dataloader batch.

    Args:
        scope (str): 'mmdet' (``DetDataSample``) or 'mmseg' (``SegDataSample``).
        shape (tuple[int, int]): image ``(H, W)``; the model's data preprocessor pads it.
        batch_size (int): number of images. Default: 1.
        seed (int): seed of the random pixels, for repeatable runs. Default: 0.

    Returns:
        dict: ``{'inputs': [Tensor(3, H, W) uint8, ...], 'data_samples': [...]}``.
    """
    height, width = shape
    if height <= 0 or width <= 0:
        raise ValueError(f'image shape must be positive (H, W), got {shape}')
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch_size)]
    return dict(inputs=images, data_samples=[_data_sample(scope, (height, width))
                                             for _ in range(batch_size)])


def preprocess(model: torch.nn.Module, batch: dict) -> dict:
    """Run the model's data preprocessor (normalise, pad, move to its device) in test mode.

    Args:
        model (nn.Module): an mmdet detector or mmseg segmentor.
        batch (dict): a batch from :func:`make_dummy_batch`.

    Returns:
        dict: ``{'inputs': Tensor(N, 3, H', W'), 'data_samples': [...]}``.
    """
    return model.data_preprocessor(batch, False)
