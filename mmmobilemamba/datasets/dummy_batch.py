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


def _annotate(sample, scope: str, shape: Tuple[int, int], num_objects: int,
              num_classes: int, generator: torch.Generator) -> None:
    """Random ground truth: boxes with labels and their masks (mmdet), or a label map with
    some ignored pixels (mmseg)."""
    height, width = shape
    if scope == 'mmseg':
        from mmengine.structures import PixelData
        labels = torch.randint(0, num_classes, (1, height, width), generator=generator)
        labels[:, :height // 8] = 255  # an ignored band, as padding gives
        sample.gt_sem_seg = PixelData(data=labels)
        return
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    corners = torch.rand(num_objects, 2, 2, generator=generator) * torch.tensor([width, height])
    top_left = corners.min(1).values
    size = (corners.max(1).values - top_left).clamp(min=8.0)
    boxes = torch.cat([top_left, (top_left + size).minimum(torch.tensor([width, height]))], 1)
    masks = torch.zeros(num_objects, height, width, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    sample.gt_instances = InstanceData(
        bboxes=boxes, labels=torch.randint(0, num_classes, (num_objects,), generator=generator),
        masks=BitmapMasks(masks.numpy(), height, width))
    sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                            labels=torch.zeros(0, dtype=torch.long))


def make_dummy_batch(scope: str, shape: Tuple[int, int], batch_size: int = 1,
                     seed: int = 0, with_annotations: bool = False, num_objects: int = 5,
                     num_classes: int = 80) -> dict:
    """Random uint8 images with their data samples, in the form of a dataloader batch.

    Args:
        scope (str): 'mmdet' (``DetDataSample``) or 'mmseg' (``SegDataSample``).
        shape (tuple[int, int]): image ``(H, W)``; the model's data preprocessor pads it.
        batch_size (int): number of images. Default: 1.
        seed (int): seed of the random pixels, for repeatable runs. Default: 0.
        with_annotations (bool): add random ground truth, for a training step (boxes,
            labels and masks for mmdet; a label map for mmseg). Default: False.
        num_objects (int): objects per image with annotations (mmdet). Default: 5.
        num_classes (int): labels are drawn from ``range(num_classes)``. Default: 80.

    Returns:
        dict: ``{'inputs': [Tensor(3, H, W) uint8, ...], 'data_samples': [...]}``.
    """
    height, width = shape
    if height <= 0 or width <= 0:
        raise ValueError(f'image shape must be positive (H, W), got {shape}')
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch_size)]
    samples = [_data_sample(scope, (height, width)) for _ in range(batch_size)]
    if with_annotations:
        for sample in samples:
            _annotate(sample, scope, (height, width), num_objects, num_classes, generator)
    return dict(inputs=images, data_samples=samples)


def preprocess(model: torch.nn.Module, batch: dict) -> dict:
    """Run the model's data preprocessor (normalise, pad, move to its device) in test mode.

    Args:
        model (nn.Module): an mmdet detector or mmseg segmentor.
        batch (dict): a batch from :func:`make_dummy_batch`.

    Returns:
        dict: ``{'inputs': Tensor(N, 3, H', W'), 'data_samples': [...]}``.
    """
    return model.data_preprocessor(batch, False)
