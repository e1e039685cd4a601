"""Image loading that names the broken file, and a transform that skips it during training.

Importing :mod:`mmmobilemamba` makes ``dict(type='LoadImageFromFile')`` in mmdet and mmseg
pipelines build :class:`CheckedLoadImageFromFile` (mmcv's loader with the same decoding, which
names a broken file in a clear error, or skips it with ``on_error='skip'``): configs, the
configs ``tools/train.py`` writes into its work dir and the checkpoints' own configs keep the
standard name, which mmdet's ``DetInferencer`` and mmseg's ``MMSegInferencer`` look for.

Decoding decisions (they match mmcv's default ``LoadImageFromFile``, which the pretrained
weights and the published pipelines use, so results stay comparable):

* Decoding is mmcv's ``imfrombytes`` with ``color_type='color'`` and the cv2 backend by default.
* Grayscale (and palette) images become 3 identical channels; RGBA drops the alpha channel;
  gray+alpha keeps the gray value.
* 16-bit images are mapped to 8 bits by dropping the low byte (``value >> 8``, cv2's rule): the
  full 16-bit range maps linearly onto 0..255. Data using fewer bits (e.g. 12-bit sensors) come
  out dark; rescale such data set offline. The ``'pillow'`` backend clips 16-bit values instead
  (a Pillow limitation): keep the cv2 backend for 16-bit data.
* EXIF orientation is applied (cv2's ``IMREAD_COLOR`` rotates like image viewers do). Boxes and
  masks must be annotated on the rotated image, as most annotation tools display it; the full
  dataset check reports images whose decoded size disagrees with the annotated width/height,
  which is what an orientation mismatch looks like. Use ``color_type='color_ignore_orientation'``
  for annotations made on the raw pixel grid.
* Truncated files are errors, even where a decoder would return a partly grey image: JPEG data
  must contain an end-of-image marker after its last start-of-scan marker.
* Very small images decode fine. The MobileMamba backbone downsamples by up to 64 and accepts
  any input size (the detectors' data preprocessors pad to a multiple of 32 or 64), but objects
  smaller than a stride are hard to learn; the dataset check warns about images under 64 px.
"""
import importlib
import logging
from typing import Optional, Set

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS

ON_ERROR_CHOICES = ('skip', 'raise')
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b'\xff\xd8', b'\xff\xda', b'\xff\xd9'


class ImageLoadError(RuntimeError):
    """An image file is missing, unreadable, corrupt or truncated."""


def jpeg_is_truncated(data: bytes) -> bool:
    """Whether JPEG ``data`` lacks the end-of-image marker after its last scan.

    Inside entropy-coded data every 0xFF byte is stuffed, so the markers cannot appear by
    chance; the EXIF thumbnail's own markers come before the main image's last scan.
    """
    last_scan = data.rfind(_JPEG_SOS)
    return last_scan == -1 or data.find(_JPEG_EOI, last_scan) == -1


def to_three_channel_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a decoded image to ``(H, W, 3)`` uint8 (see the module docstring for the rules).

    Raises:
        ValueError: for shapes or dtypes with no sensible conversion.
    """
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ValueError(f'unsupported pixel type {img.dtype}')
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f'unsupported image shape {img.shape}')
    channels = img.shape[2]
    if channels in (1, 2):  # gray or gray+alpha
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif channels == 4:  # drop alpha
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def decode_image(data: bytes,
                 path: str = '<bytes>',
                 color_type: str = 'color',
                 backend: str = 'cv2') -> np.ndarray:
    """Decode image bytes as mmcv does, raising :class:`ImageLoadError` naming ``path``.

    Args:
        data: The file content.
        path: Only used in error messages.
        color_type: ``flag`` of :func:`mmcv.imfrombytes`. ``'color'`` and
            ``'color_ignore_orientation'`` results are normalised by
            :func:`to_three_channel_uint8`; other types are returned as decoded.
        backend: Decoding backend of :func:`mmcv.imfrombytes`.

    Returns:
        The image array (BGR for colour images, like mmcv).
    """
    if not data:
        raise ImageLoadError(f'image file is empty: {path}')
    if data.startswith(_JPEG_SOI) and jpeg_is_truncated(data):
        raise ImageLoadError(f'image file is truncated (JPEG without end marker): {path}')
    try:
        img = mmcv.imfrombytes(data, flag=color_type, backend=backend)
    except Exception as err:  # decoders raise many types (cv2.error, OSError, ValueError...)
        raise ImageLoadError(f'cannot decode image {path}: {err}') from err
    if img is None or img.size == 0:
        raise ImageLoadError(f'cannot decode image {path}: corrupt or not an image')
    if color_type.startswith('color'):
        try:
            img = to_three_channel_uint8(img)
        except ValueError as err:
            raise ImageLoadError(f'cannot use image {path}: {err}') from err
    return img


def load_image(path: str,
               color_type: str = 'color',
               backend: str = 'cv2',
               backend_args: Optional[dict] = None) -> np.ndarray:
    """Read and decode an image through mmengine's file I/O (:func:`decode_image` rules).

    Raises:
        ImageLoadError: when the file is missing, unreadable or not a decodable image.
    """
    try:
        data = fileio.get(path, backend_args=backend_args)
    except Exception as err:  # FileNotFoundError, PermissionError, remote-storage errors...
        raise ImageLoadError(f'cannot read image file {path}: {err}') from err
    return decode_image(data, path, color_type=color_type, backend=backend)


@TRANSFORMS.register_module()
class SafeLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that handles broken images explicitly.

    Registered in mmengine's root ``TRANSFORMS`` registry (which mmcv uses and mmdet's and
    mmseg's registries inherit), so ``dict(type='SafeLoadImageFromFile')`` works in detection and
    segmentation pipelines alike. Decoding rules: see :mod:`mmmobilemamba.engine.image_loading`.

    Args:
        on_error: ``'skip'`` (default): log a warning naming the file and return ``None``; in
            training mmengine's ``BaseDataset`` then loads another random sample instead (up to
            its ``max_refetch``, 1000 by default). ``'raise'``: raise :class:`ImageLoadError`
            naming the file. Use ``'raise'`` in val/test pipelines, where mmengine refuses
            ``None`` samples anyway and skipping would bias the metric.
        **kwargs: Arguments of mmcv's ``LoadImageFromFile`` (``to_float32``, ``color_type``,
            ``imdecode_backend``, ``backend_args``, the deprecated ``file_client_args``).
            ``ignore_empty`` is superseded by ``on_error``.
    """

    def __init__(self, on_error: str = 'skip', **kwargs) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f'on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}')
        super().__init__(**kwargs)
        self.on_error = on_error
        self._reported: Set[str] = set()  # warn once per file and worker, not every epoch

    def transform(self, results: dict) -> Optional[dict]:
        """Load ``results['img_path']``; on failure skip (``None``) or raise, per ``on_error``."""
        path = results['img_path']
        try:
            img = decode_image(self._read(path), path, self.color_type, self.imdecode_backend)
        except ImageLoadError as err:
            if self.on_error == 'raise':
                raise
            self._warn_skipped(path, err)
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _read(self, path: str) -> bytes:
        try:
            if self.file_client_args is not None:  # deprecated, still found in mmdet 3.0 configs
                return fileio.FileClient.infer_client(self.file_client_args, path).get(path)
            return fileio.get(path, backend_args=self.backend_args)
        except Exception as err:
            raise ImageLoadError(f'cannot read image file {path}: {err}') from err

    def _warn_skipped(self, path: str, err: Exception) -> None:
        if path in self._reported:
            return
        self._reported.add(path)
        print_log(f'Skipping a training sample: {err}', logger='current', level=logging.WARNING)

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, on_error={self.on_error!r})'


class CheckedLoadImageFromFile(SafeLoadImageFromFile):
    """What ``dict(type='LoadImageFromFile')`` builds in mmdet and mmseg pipelines.

    mmcv's ``LoadImageFromFile`` (same arguments, same decoding), where a missing, corrupt or
    truncated image is an :class:`ImageLoadError` naming the file instead of a decoder's
    traceback, or, with ``on_error='skip'`` (what ``tools/train.py`` sets in training
    pipelines), a warning naming it and another sample.

    Args:
        on_error (str, optional): ``'raise'`` or ``'skip'``. Default: ``'skip'`` with mmcv's
            ``ignore_empty=True``, else ``'raise'``.
        **kwargs: Arguments of mmcv's ``LoadImageFromFile``.
    """

    def __init__(self, on_error: Optional[str] = None, **kwargs) -> None:
        if on_error is None:
            on_error = 'skip' if kwargs.get('ignore_empty') else 'raise'
        super().__init__(on_error=on_error, **kwargs)


def register_checked_loader() -> None:
    """Make ``LoadImageFromFile`` name :class:`CheckedLoadImageFromFile` in mmdet's and mmseg's
    ``TRANSFORMS`` (those installed). mmcv's own stays ``mmcv.LoadImageFromFile``."""
    for module in ('mmdet.registry', 'mmseg.registry'):
        try:
            registry = importlib.import_module(module).TRANSFORMS
        except ImportError:  # that library is not installed
            continue
        registry.register_module(name='LoadImageFromFile', module=CheckedLoadImageFromFile,
                                 force=True)
