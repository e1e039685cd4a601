"""SafeLoadImageFromFile: clear errors, training skips corrupt images, pixel formats handled."""
import io

import cv2
import numpy as np
import pytest
from mmengine.dataset import BaseDataset
from PIL import Image

from mmmobilemamba.engine import ImageLoadError, SafeLoadImageFromFile, decode_image, load_image
from mmmobilemamba.engine import image_loading
from mmmobilemamba.engine.image_loading import jpeg_is_truncated


def _png(array: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, 'PNG')
    return buf.getvalue()


def _jpeg(array: np.ndarray, orientation=None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(array).save(buf, 'JPEG', exif=exif.tobytes())
    return buf.getvalue()


def _noise(h=48, w=64):
    return np.random.RandomState(0).randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    img = decode_image(_png(gray))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert all((img[:, :, c] == gray).all() for c in range(3))


def test_rgba_drops_alpha_and_keeps_colour():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)  # RGB
    img = decode_image(_png(rgba))  # transparent everywhere: colour must not be blended
    assert img.shape == (8, 8, 3)
    assert tuple(img[0, 0]) == (50, 100, 200)  # BGR, like mmcv


@pytest.mark.parametrize('channels', [1, 3])
def test_16_bit_maps_high_byte_to_uint8(channels):
    values = np.array([0, 255, 256, 32768, 65535], np.uint16)
    arr = np.tile(values, (4, 1))
    if channels == 3:
        arr = np.stack([arr] * 3, axis=-1)
    ok, data = cv2.imencode('.png', arr)
    img = decode_image(data.tobytes())
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [0, 0, 1, 128, 255]


def test_exif_orientation_is_applied():
    img = decode_image(_jpeg(_noise(40, 80), orientation=6))  # "rotate 90 degrees"
    assert img.shape == (80, 40, 3)
    raw = decode_image(_jpeg(_noise(40, 80), orientation=6), color_type='color_ignore_orientation')
    assert raw.shape == (40, 80, 3)


@pytest.mark.parametrize('content, reason', [
    (b'', 'empty'),
    (b'this is not an image', 'cannot decode'),
    ('half_jpeg', 'truncated'),
    ('half_png', 'cannot decode'),
])
def test_broken_files_raise_naming_the_file(tmp_path, content, reason):
    if content == 'half_jpeg':
        data = _jpeg(_noise(100, 100))
        content = data[:len(data) // 2]
    elif content == 'half_png':
        data = _png(_noise(100, 100))
        content = data[:len(data) // 2]
    path = tmp_path / 'broken.jpg'
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as err:
        load_image(str(path))
    assert str(path) in str(err.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match='missing.png'):
        load_image(str(tmp_path / 'missing.png'))


def test_jpeg_truncation_detection():
    data = _jpeg(_noise(), orientation=1)
    assert not jpeg_is_truncated(data)
    assert jpeg_is_truncated(data[:-2])


class _ImageList(BaseDataset):
    """The images of a folder, through a pipeline."""

    def __init__(self, paths, **kwargs):
        self._paths = paths
        super().__init__(**kwargs)

    def load_data_list(self):
        return [dict(img_path=p) for p in self._paths]


@pytest.fixture
def folder_with_corrupt_image(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f'good_{i}.png'
        path.write_bytes(_png(_noise(16, 16)))
        paths.append(str(path))
    bad = tmp_path / 'corrupt.jpg'
    bad.write_bytes(b'\xff\xd8\xff garbage')
    paths.insert(1, str(bad))
    return paths, str(bad)


def test_training_dataset_skips_corrupt_image_with_a_warning(folder_with_corrupt_image,
                                                             monkeypatch):
    paths, bad = folder_with_corrupt_image
    warnings = []
    monkeypatch.setattr(image_loading, 'print_log', lambda msg, **kw: warnings.append(msg))
    dataset = _ImageList(paths, pipeline=[dict(type='SafeLoadImageFromFile')])
    sample = dataset[1]
    assert sample['img_path'] != bad and sample['img'].shape == (16, 16, 3)
    assert len(warnings) == 1 and bad in warnings[0]


def test_on_error_raise_fails_naming_the_file(folder_with_corrupt_image):
    paths, bad = folder_with_corrupt_image
    dataset = _ImageList(paths, pipeline=[dict(type='SafeLoadImageFromFile', on_error='raise')])
    with pytest.raises(ImageLoadError, match='corrupt.jpg'):
        dataset[1]


def test_deprecated_file_client_args_still_work(folder_with_corrupt_image):
    paths, _ = folder_with_corrupt_image
    transform = SafeLoadImageFromFile(file_client_args=dict(backend='disk'))
    assert transform(dict(img_path=paths[0]))['img'].shape == (16, 16, 3)


def test_invalid_on_error_is_rejected():
    with pytest.raises(ValueError):
        SafeLoadImageFromFile(on_error='ignore')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_transform_resolves_from_mmdet_and_mmseg_registries(scope):
    registry = pytest.importorskip(f'{scope}.registry')
    transform = registry.TRANSFORMS.build(dict(type='SafeLoadImageFromFile', to_float32=True))
    assert isinstance(transform, SafeLoadImageFromFile)


@pytest.mark.parametrize('size', [(1, 1), (7, 5), (63, 40)])
def test_very_small_images_load_and_run_through_a_detector(tmp_path, size):
    """Images under 64 px: decoded as they are; the model takes any size (ceil of the
    strides), so nothing is rejected. Decision: handled, no minimum size."""
    import torch

    from mmmobilemamba.models import MobileMamba
    path = tmp_path / 'tiny.png'
    path.write_bytes(_png(_noise(*size)))
    img = load_image(str(path))
    assert img.shape == (*size, 3) and img.dtype == np.uint8
    from tiny_models import TINY_ARCH
    with torch.no_grad():
        outs = MobileMamba(TINY_ARCH).eval()(torch.from_numpy(img).permute(2, 0, 1)[None].float())
    assert [tuple(o.shape[-2:]) for o in outs] == [(-(-size[0] // s), -(-size[1] // s))
                                                   for s in (16, 32, 64)]


def test_very_large_image_loads_at_full_size(tmp_path):
    """A 6000x4000 photo decodes in full (the pipeline's Resize then scales it down)."""
    path = tmp_path / 'large.jpg'
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[::97, :, 1] = 255
    path.write_bytes(_jpeg(big))
    results = SafeLoadImageFromFile()(dict(img_path=str(path)))
    assert results['img'].shape == (4000, 6000, 3)
    assert results['ori_shape'] == (4000, 6000)
