"""Deterministic synthetic "shapes" datasets in the real COCO and ADE20K formats.

Two small datasets that need no download and train in minutes on a CPU:

* :func:`generate_coco_shapes` -- detection / instance segmentation. Images hold
  1-6 shapes (classes :data:`DEMO_CLASSES`) of varied size, colour and fill on
  textured backgrounds with distractor strokes; shapes may occlude each other.
  Every drawn shape is annotated with its *visible* region: a COCO polygon
  (traced from the visible mask), a tight box and the visible area. Placements
  that would leave an earlier shape mostly hidden, with a hole or with tiny
  fragments are re-drawn, so polygons describe the pixels exactly.
* :func:`generate_ade_shapes` -- semantic segmentation in the ADE20K layout.
  Outdoor-like scenes (sky, grass, sand, water) with a few shapes on top.
  Label maps store 0 for "ignore" (a one-pixel band around each shape, like the
  VOC boundary band) and classes 1..K (:data:`SEG_CLASSES`), which is what
  mmseg expects with ``reduce_zero_label=True``.

Each image is drawn from its own generator seeded with ``(seed, split, index)``,
so output is reproducible and growing ``num_train`` keeps existing images.
A ``manifest.json`` written last records the parameters; a second call with
the same parameters finds the data complete and returns at once.

Config usage (classes are imported by value)::

    from mmmobilemamba.datasets.synthetic import DEMO_CLASSES
    metainfo = dict(classes=DEMO_CLASSES)
    train_dataloader = dict(dataset=dict(
        type='CocoDataset', data_root='data/demo_coco/', metainfo=metainfo,
        ann_file='annotations/instances_train.json', data_prefix=dict(img='train/')))
"""
from __future__ import annotations

import colorsys
import json
import math
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .converters import PathLike, coco_categories, mask_to_polygons, write_coco_json

#: Detection / instance classes; COCO category ids are 1..5 in this order.
DEMO_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'cross')
#: A visualisation colour per detection class.
DEMO_PALETTE: List[Tuple[int, int, int]] = [
    (220, 20, 60), (0, 120, 255), (255, 160, 0), (150, 0, 210), (0, 170, 80)]
#: Semantic classes; label value on disk is index + 1 (0 = ignore).
SEG_CLASSES: Tuple[str, ...] = (
    'sky', 'grass', 'sand', 'water', 'circle', 'square', 'triangle')
#: A visualisation colour per semantic class.
SEG_PALETTE: List[Tuple[int, int, int]] = [
    (135, 206, 235), (34, 139, 34), (238, 214, 175), (0, 90, 160),
    (220, 20, 60), (255, 160, 0), (150, 0, 210)]

DEFAULT_COCO_DIR = 'data/demo_coco'
DEFAULT_ADE_DIR = 'data/demo_ade'
MANIFEST_NAME = 'manifest.json'
#: Bumped whenever the drawn content changes, so old data is regenerated.
GENERATOR_VERSION = 1

_SPLIT_CODES = {'train': 0, 'val': 1}
_ADE_SPLITS = {'train': 'training', 'val': 'validation'}
_FILE_PREFIX = 'shapes_'
_SEG_SHAPES = ('circle', 'square', 'triangle')

Size = Union[int, Sequence[int]]
Float3 = np.ndarray


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def generate_coco_shapes(out_dir: PathLike = DEFAULT_COCO_DIR,
                         num_train: int = 200,
                         num_val: int = 50,
                         image_size: Size = 192,
                         seed: int = 0,
                         min_objects: int = 1,
                         max_objects: int = 6,
                         image_format: str = 'jpg',
                         force: bool = False) -> dict:
    """Write the shapes detection / instance-segmentation dataset in COCO format.

    Layout::

        out_dir/annotations/instances_train.json
        out_dir/annotations/instances_val.json
        out_dir/train/shapes_train_00000.jpg ...
        out_dir/val/shapes_val_00000.jpg ...
        out_dir/manifest.json

    Args:
        out_dir: Dataset root.
        num_train: Number of training images.
        num_val: Number of validation images.
        image_size: ``S`` for S x S images, or ``(width, height)``.
        seed: Base seed; the same seed gives byte-identical files.
        min_objects: Fewest shapes per image (>= 1).
        max_objects: Most shapes per image (fewer when no valid placement is
            found).
        image_format: ``'jpg'`` or ``'png'``.
        force: Regenerate even if a matching dataset is already there.

    Returns:
        A summary: ``root``, ``classes``, ``params``, ``skipped`` (True when
        the data was already complete), ``seconds`` and, per split,
        ``ann_file``/``img_dir`` (relative to ``root``), ``num_images`` and
        ``num_instances``.
    """
    width, height = _parse_size(image_size)
    if image_format not in ('jpg', 'png'):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f'need 1 <= min_objects <= max_objects, got {min_objects}, '
                         f'{max_objects}')
    params = _jsonable(dict(num_train=num_train, num_val=num_val, width=width,
                            height=height, seed=seed, min_objects=min_objects,
                            max_objects=max_objects, image_format=image_format))
    root = Path(out_dir)
    counts = dict(train=num_train, val=num_val)
    expected = [f'annotations/instances_{s}.json' for s in counts]
    expected += [f'{s}/{_file_name(s, i, image_format)}'
                 for s, n in counts.items() for i in range(n)]
    if not force and _manifest_matches(root, 'coco_shapes', params, expected):
        return _load_summary(root)

    start = time.perf_counter()
    _start_generation(root, [root / s for s in counts])
    splits = {}
    for split, num in counts.items():
        coco = _write_coco_split(root, split, num, width, height, seed, min_objects,
                                 max_objects, image_format)
        splits[split] = dict(ann_file=f'annotations/instances_{split}.json',
                             img_dir=f'{split}/', num_images=len(coco['images']),
                             num_instances=len(coco['annotations']))
    summary = dict(root=str(root), kind='coco_shapes', version=GENERATOR_VERSION,
                   classes=list(DEMO_CLASSES), params=params, splits=splits,
                   seconds=round(time.perf_counter() - start, 3))
    return _finish_generation(root, summary)


def generate_ade_shapes(out_dir: PathLike = DEFAULT_ADE_DIR,
                        num_train: int = 200,
                        num_val: int = 50,
                        image_size: Size = 160,
                        seed: int = 0,
                        boundary_ignore: bool = True,
                        force: bool = False) -> dict:
    """Write the shapes semantic-segmentation dataset in the ADE20K layout.

    Layout::

        out_dir/images/training/shapes_train_00000.jpg ...
        out_dir/images/validation/shapes_val_00000.jpg ...
        out_dir/annotations/training/shapes_train_00000.png ...
        out_dir/annotations/validation/shapes_val_00000.png ...
        out_dir/manifest.json

    Label maps are 8-bit PNGs: 0 = ignore, ``i + 1`` = ``SEG_CLASSES[i]``.
    Read them with ``reduce_zero_label=True``.

    Args:
        out_dir, num_train, num_val, image_size, seed, force: as for
            :func:`generate_coco_shapes`.
        boundary_ignore: Mark a one-pixel band around each shape as 0 (ignore).

    Returns:
        A summary like :func:`generate_coco_shapes`, with per split
        ``img_dir``/``ann_dir`` (relative to ``root``), ``num_images`` and
        ``class_pixels`` (pixel count per label value 0..K).
    """
    width, height = _parse_size(image_size)
    params = _jsonable(dict(num_train=num_train, num_val=num_val, width=width,
                            height=height, seed=seed, boundary_ignore=boundary_ignore))
    root = Path(out_dir)
    counts = dict(train=num_train, val=num_val)
    expected = []
    for split, num in counts.items():
        for i in range(num):
            stem = Path(_file_name(split, i, 'jpg')).stem
            expected += [f'images/{_ADE_SPLITS[split]}/{stem}.jpg',
                         f'annotations/{_ADE_SPLITS[split]}/{stem}.png']
    if not force and _manifest_matches(root, 'ade_shapes', params, expected):
        return _load_summary(root)

    start = time.perf_counter()
    dirs = [root / top / _ADE_SPLITS[s] for top in ('images', 'annotations') for s in counts]
    _start_generation(root, dirs)
    splits = {}
    for split, num in counts.items():
        pixels = _write_ade_split(root, split, num, width, height, seed, boundary_ignore)
        sub = _ADE_SPLITS[split]
        splits[split] = dict(img_dir=f'images/{sub}', ann_dir=f'annotations/{sub}',
                             num_images=num, class_pixels=pixels)
    summary = dict(root=str(root), kind='ade_shapes', version=GENERATOR_VERSION,
                   classes=list(SEG_CLASSES), params=params, splits=splits,
                   seconds=round(time.perf_counter() - start, 3))
    return _finish_generation(root, summary)


def render_coco_sample(seed: int, width: int = 192, height: int = 192,
                       min_objects: int = 1,
                       max_objects: int = 6) -> Tuple[np.ndarray, List[dict]]:
    """Draw one detection image without writing anything.

    Args:
        seed: Seed (or seed sequence entropy) for this image.
        width: Image width.
        height: Image height.
        min_objects: Fewest shapes.
        max_objects: Most shapes.

    Returns:
        ``(image, objects)``: an ``(H, W, 3)`` uint8 RGB image and, per shape
        in drawing order, ``dict(label=int, mask=bool (H, W) visible mask)``.
    """
    return _render_coco_image(np.random.default_rng(seed), width, height,
                              min_objects, max_objects)


def render_ade_sample(seed: int, width: int = 160, height: int = 160,
                      boundary_ignore: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one segmentation sample: ``(RGB uint8 image, uint8 label map)``."""
    return _render_ade_image(np.random.default_rng(seed), width, height, boundary_ignore)


# --------------------------------------------------------------------------- #
# Files, manifest and idempotence
# --------------------------------------------------------------------------- #
def _parse_size(image_size: Size) -> Tuple[int, int]:
    """``(width, height)`` from an int or a pair; both at least 32 px."""
    if isinstance(image_size, int):
        width = height = image_size
    else:
        width, height = (int(v) for v in image_size)
    if min(width, height) < 32:
        raise ValueError(f'image_size must be at least 32 px, got {width}x{height}')
    return width, height


def _jsonable(params: dict) -> dict:
    """Parameters as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(params))


def _file_name(split: str, index: int, ext: str) -> str:
    return f'{_FILE_PREFIX}{split}_{index:05d}.{ext}'


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per image: results do not depend on split sizes."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _manifest_matches(root: Path, kind: str, params: dict, expected: List[str]) -> bool:
    """True when ``root`` holds complete data generated with ``params``."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if (manifest.get('kind'), manifest.get('version'), manifest.get('params')) != \
            (kind, GENERATOR_VERSION, params):
        return False
    return all((root / rel).is_file() for rel in expected)


def _load_summary(root: Path) -> dict:
    summary = json.loads((root / MANIFEST_NAME).read_text())
    summary.update(root=str(root), skipped=True)
    return summary


def _start_generation(root: Path, dirs: List[Path]) -> None:
    """Drop the manifest and files from earlier runs, create the folders.

    Only files with our prefix are removed; mmseg lists whole folders, so a
    stale image from a larger earlier run would otherwise join the dataset.
    """
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for folder in dirs:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f'{_FILE_PREFIX}*'):
            stale.unlink()


def _finish_generation(root: Path, summary: dict) -> dict:
    """Write the manifest last: its presence marks the data complete."""
    (root / MANIFEST_NAME).write_text(json.dumps(summary, indent=2))
    return dict(summary, skipped=False)


def _save_rgb(image: np.ndarray, path: Path) -> None:
    if path.suffix == '.jpg':
        Image.fromarray(image).save(path, quality=92)
    else:
        Image.fromarray(image).save(path)


def _write_coco_split(root: Path, split: str, num: int, width: int, height: int,
                      seed: int, min_objects: int, max_objects: int,
                      image_format: str) -> dict:
    """Render one split, save its images and annotation JSON."""
    images, annotations = [], []
    for index in range(num):
        rng = _image_rng(seed, split, index)
        image, objects = _render_coco_image(rng, width, height, min_objects, max_objects)
        name = _file_name(split, index, image_format)
        _save_rgb(image, root / split / name)
        image_id = index + 1
        images.append(dict(id=image_id, file_name=name, width=width, height=height))
        for obj in objects:
            # COCO evaluation treats annotation id 0 as "unmatched": start at 1.
            ann = _instance_annotation(obj['mask'], obj['label'])
            ann.update(id=len(annotations) + 1, image_id=image_id)
            annotations.append(ann)
    coco = dict(info=dict(description=f'mmmobilemamba synthetic shapes ({split})',
                          version=str(GENERATOR_VERSION)),
                licenses=[], images=images, annotations=annotations,
                categories=coco_categories(DEMO_CLASSES, supercategory='shape'))
    write_coco_json(coco, root / 'annotations' / f'instances_{split}.json')
    return coco


def _instance_annotation(mask: np.ndarray, label: int) -> dict:
    """COCO annotation (no ids) of a visible mask: polygons, tight box, area."""
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    w, h = int(cols.max()) + 1 - x0, int(rows.max()) + 1 - y0
    return dict(category_id=label + 1, bbox=[x0, y0, w, h], area=int(mask.sum()),
                iscrowd=0, segmentation=mask_to_polygons(mask))


def _write_ade_split(root: Path, split: str, num: int, width: int, height: int,
                     seed: int, boundary_ignore: bool) -> List[int]:
    """Render one split, save images and label maps; return label histogram."""
    sub = _ADE_SPLITS[split]
    pixels = np.zeros(len(SEG_CLASSES) + 1, dtype=np.int64)
    for index in range(num):
        rng = _image_rng(seed, split, index)
        image, labels = _render_ade_image(rng, width, height, boundary_ignore)
        stem = Path(_file_name(split, index, 'jpg')).stem
        _save_rgb(image, root / 'images' / sub / f'{stem}.jpg')
        Image.fromarray(labels, mode='L').save(root / 'annotations' / sub / f'{stem}.png')
        pixels += np.bincount(labels.reshape(-1), minlength=len(pixels))
    return pixels.tolist()


# --------------------------------------------------------------------------- #
# Colours and textures (float32 RGB arrays in 0..255)
# --------------------------------------------------------------------------- #
def _hsv(h: float, s: float, v: float) -> Float3:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _random_color(rng: np.random.Generator, sat: Tuple[float, float] = (0.0, 1.0),
                  val: Tuple[float, float] = (0.15, 1.0)) -> Float3:
    return _hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def _coords(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids ``(x, y)`` as float32."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x + 0.5, y + 0.5


def _ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Linear ramp 0..1 across the image in a random direction."""
    x, y = _coords(height, width)
    angle = rng.uniform(0, 2 * math.pi)
    t = x * math.cos(angle) + y * math.sin(angle)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _waves(rng: np.random.Generator, height: int, width: int,
           period: Tuple[float, float]) -> np.ndarray:
    """Sinusoidal stripes in 0..1 with random angle, period and phase."""
    x, y = _coords(height, width)
    angle = rng.uniform(0, math.pi)
    p = rng.uniform(*period)
    t = x * math.cos(angle) + y * math.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * math.pi * t / p + rng.uniform(0, 2 * math.pi))


def _smooth_noise(rng: np.random.Generator, height: int, width: int,
                  cells: int) -> np.ndarray:
    """Value noise in 0..1: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode='F').resize(
        (width, height), Image.BICUBIC), dtype=np.float32)
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


def _mix(a: Float3, b: Float3, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours with weights ``t`` (H, W) in 0..1."""
    return a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured background: gradient, stripes or blotches, maybe layered."""
    makers: List[Callable[[], np.ndarray]] = [
        lambda: _mix(_random_color(rng), _random_color(rng), _ramp(rng, height, width)),
        lambda: _mix(_random_color(rng), _random_color(rng),
                     _waves(rng, height, width, (5, 40))),
        lambda: _mix(_random_color(rng), _random_color(rng),
                     _smooth_noise(rng, height, width, int(rng.integers(2, 9)))),
    ]
    canvas = makers[int(rng.integers(len(makers)))]()
    if rng.random() < 0.5:
        overlay = makers[int(rng.integers(len(makers)))]()
        canvas = canvas * (1 - (alpha := rng.uniform(0.2, 0.5))) + overlay * alpha
    return canvas + rng.normal(0, rng.uniform(2, 12), canvas.shape)


def _draw_clutter(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Distractor strokes (lines and short arcs) that are not objects."""
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.integers(0, 6))):
        colour = tuple(int(c) for c in _random_color(rng))
        stroke = int(rng.integers(1, 4))
        if rng.random() < 0.6:
            xy = [tuple(rng.uniform(0, [width, height])) for _ in range(2)]
            draw.line(xy, fill=colour, width=stroke)
        else:
            cx, cy = rng.uniform(0, [width, height])
            r = rng.uniform(8, max(width, height) / 2)
            start = rng.uniform(0, 360)
            # Under half a turn, so arcs never look like circles.
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(30, 150),
                     fill=colour, width=stroke)
    return np.asarray(image, dtype=np.float32)


def _contrasting_color(rng: np.random.Generator, under: Float3,
                       tries: int = 8, min_distance: float = 90.0) -> Float3:
    """A random colour that stands out from the mean colour ``under`` it."""
    best, best_dist = None, -1.0
    for _ in range(tries):
        colour = _random_color(rng, sat=(0.2, 1.0), val=(0.15, 1.0))
        dist = float(np.linalg.norm(colour - under))
        if dist >= min_distance:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def _object_fill(rng: np.random.Generator, height: int, width: int,
                 colour: Float3) -> np.ndarray:
    """Object appearance: solid, shaded or two-tone striped, with grain."""
    style = rng.choice(3, p=[0.5, 0.35, 0.15])
    if style == 0:
        fill = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    elif style == 1:
        shade = np.clip(colour * rng.uniform(0.45, 1.5), 0, 255)
        fill = _mix(colour, shade, _ramp(rng, height, width))
    else:
        other = np.clip(colour * rng.uniform(0.4, 0.75), 0, 255)
        fill = _mix(colour, other, np.round(_waves(rng, height, width, (4, 12))))
    return fill + rng.normal(0, 4, fill.shape)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; the image border does not erode."""
    p = np.pad(mask, 1, mode='edge')
    return (p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


# --------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------- #
def _unit_outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices ``(N, 2)`` of a shape with circumradius 1 centred at 0."""
    if kind == 'circle':
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind in ('square', 'triangle'):
        n = 4 if kind == 'square' else 3
        t = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind == 'star':
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if kind == 'cross':
        a = rng.uniform(0.25, 0.38)  # half the arm width
        quarter = np.array([[a, 1], [a, a], [1, a]])
        turns = [quarter @ np.array([[c, s], [-s, c]])
                 for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1))]
        return np.concatenate(turns) / math.hypot(1, a)
    raise ValueError(f'unknown shape {kind!r}')


def _sample_outline(rng: np.random.Generator, kind: str, width: int, height: int,
                    radius_range: Tuple[float, float]) -> np.ndarray:
    """A randomly sized, stretched, rotated and placed shape outline in pixels."""
    short = min(width, height)
    lo, hi = radius_range
    radius = math.exp(rng.uniform(math.log(lo * short), math.log(hi * short)))
    stretch = math.sqrt(math.exp(rng.uniform(math.log(0.85), math.log(1.18))))
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    pts = _unit_outline(kind, rng) * [stretch, 1 / stretch]
    pts = pts @ np.array([[c, s], [-s, c]]) * radius
    # Centres may sit near the border, so some shapes are cut by the frame.
    margin = 0.4 * radius
    centre = rng.uniform([margin, margin], [width - margin, height - margin])
    return pts + centre


def _rasterize(outline: np.ndarray, width: int, height: int) -> np.ndarray:
    canvas = Image.new('L', (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _outline_area(outline: np.ndarray) -> float:
    x, y = outline[:, 0], outline[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _mask_is_clean(mask: np.ndarray, min_part: int, max_parts: int = 3) -> bool:
    """No holes, at most ``max_parts`` pieces, none smaller than ``min_part`` px.

    COCO polygons cannot express holes and tiny fragments make degenerate
    polygons, so such visible masks are avoided rather than annotated wrongly.
    """
    import cv2  # installed with mmcv; imported lazily to keep imports light

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return False
    crop = np.pad(mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1], 1)
    crop = crop.astype(np.uint8)
    hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)[-1]
    if hierarchy is None or np.any(hierarchy[0][:, 3] >= 0):
        return False
    num, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return len(areas) <= max_parts and bool(np.all(areas >= min_part))


def _place_objects(rng: np.random.Generator, width: int, height: int, count: int,
                   radius_range: Tuple[float, float] = (0.05, 0.28),
                   min_area: int = 40, min_visible: float = 0.35,
                   max_tries: int = 30) -> Tuple[List[int], List[np.ndarray], List[np.ndarray]]:
    """Place up to ``count`` shapes, later ones on top.

    A candidate is rejected when it is mostly outside the image, or when it
    would leave an earlier shape with under ``min_visible`` of its area, under
    ``min_area`` px, a hole or slivers.

    Returns:
        ``(labels, full_masks, visible_masks)`` in drawing order.
    """
    labels: List[int] = []
    full: List[np.ndarray] = []
    visible: List[np.ndarray] = []
    for _ in range(count):
        for _ in range(max_tries):
            label = int(rng.integers(len(DEMO_CLASSES)))
            outline = _sample_outline(rng, DEMO_CLASSES[label], width, height, radius_range)
            mask = _rasterize(outline, width, height)
            if mask.sum() < max(min_area, 0.6 * _outline_area(outline)):
                continue
            updated = _occlude(full, visible, mask, min_area, min_visible)
            if updated is None or not _mask_is_clean(mask, min_area):
                continue
            labels.append(label)
            full.append(mask)
            visible = updated + [mask.copy()]
            break
    return labels, full, visible


def _occlude(full: List[np.ndarray], visible: List[np.ndarray], mask: np.ndarray,
             min_area: int, min_visible: float) -> Optional[List[np.ndarray]]:
    """Visible masks after putting ``mask`` on top, or None if one gets bad."""
    updated = []
    for whole, seen in zip(full, visible):
        if not np.any(seen & mask):
            updated.append(seen)
            continue
        left = seen & ~mask
        area = int(left.sum())
        if area < max(min_area, min_visible * int(whole.sum())):
            return None
        if not _mask_is_clean(left, min_part=max(12, min_area // 4)):
            return None
        updated.append(left)
    return updated


def _render_coco_image(rng: np.random.Generator, width: int, height: int,
                       min_objects: int, max_objects: int) -> Tuple[np.ndarray, List[dict]]:
    """Draw background, clutter and shapes; return the image and visible masks."""
    count = int(rng.integers(min_objects, max_objects + 1))
    labels, full, visible = _place_objects(rng, width, height, count)
    canvas = _draw_clutter(rng, _background(rng, height, width))
    for mask in full:
        colour = _contrasting_color(rng, canvas[mask].mean(axis=0))
        fill = _object_fill(rng, height, width, colour)
        canvas[mask] = fill[mask]
        if rng.random() < 0.25:  # a dark or light rim, still part of the object
            rim = mask & ~_erode(mask)
            canvas[rim] = colour * (0.3 if rng.random() < 0.5 else 1.6)
    canvas += rng.normal(0, rng.uniform(1, 5), canvas.shape)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return image, [dict(label=lab, mask=vis) for lab, vis in zip(labels, visible)]


# --------------------------------------------------------------------------- #
# Segmentation scenes
# --------------------------------------------------------------------------- #
def _sky(rng: np.random.Generator, height: int, width: int, horizon: float) -> np.ndarray:
    """Blue gradient towards a pale horizon, with soft clouds."""
    hue = rng.uniform(0.53, 0.62)
    top = _hsv(hue, rng.uniform(0.45, 0.8), rng.uniform(0.6, 0.9))
    low = _hsv(hue, rng.uniform(0.1, 0.3), rng.uniform(0.85, 1.0))
    _, y = _coords(height, width)
    sky = _mix(top, low, np.clip(y / max(horizon, 1.0), 0, 1))
    cover = rng.uniform(0.45, 0.85)
    clouds = np.clip((_smooth_noise(rng, height, width, int(rng.integers(3, 7))) - cover)
                     / (1 - cover), 0, 1) * rng.uniform(0.4, 0.9)
    white = np.full(3, 245, np.float32)
    return sky * (1 - clouds[..., None]) + white[None, None] * clouds[..., None]


def _grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Green with vertical blade streaks."""
    base = _hsv(rng.uniform(0.2, 0.36), rng.uniform(0.45, 0.85), rng.uniform(0.3, 0.65))
    blades = rng.normal(0, 1, (max(height // 4, 2), width)).astype(np.float32)
    blades = np.asarray(Image.fromarray(blades, mode='F').resize((width, height),
                                                                 Image.BILINEAR))
    light = 1 + 0.25 * blades + 0.2 * (_smooth_noise(rng, height, width, 3) - 0.5)
    return base[None, None] * light[..., None] + rng.normal(0, 6, (height, width, 3))


def _sand(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pale beige with fine grain and faint dune ripples."""
    base = _hsv(rng.uniform(0.08, 0.13), rng.uniform(0.25, 0.45), rng.uniform(0.75, 0.92))
    light = 1 + 0.07 * (_waves(rng, height, width, (12, 30)) - 0.5)
    return base[None, None] * light[..., None] + rng.normal(0, 9, (height, width, 3))


def _water(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blue-teal with horizontal ripples and sparse glints."""
    base = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.6, 0.9), rng.uniform(0.4, 0.7))
    x, y = _coords(height, width)
    phase = 0.6 * np.sin(2 * math.pi * x / rng.uniform(20, 60))
    ripples = np.sin(2 * math.pi * y / rng.uniform(4, 8) + phase)
    water = base[None, None] * (1 + 0.15 * ripples[..., None])
    glints = rng.random((height, width)) < 0.01
    water[glints] = 230
    return water + rng.normal(0, 4, (height, width, 3))


def _ground_labels(rng: np.random.Generator, ground: np.ndarray) -> np.ndarray:
    """Split the ground into water, sand and grass blobs (labels 4, 3, 2).

    One smooth noise field is cut at random quantiles, so sand tends to lie
    between water and grass like a shore. Some classes may be absent.
    """
    height, width = ground.shape
    field = _smooth_noise(rng, height, width, int(rng.integers(2, 5)))
    shares = rng.dirichlet([1.0, 1.0, 1.0]) * (rng.random(3) > 0.2)
    if shares.sum() == 0:
        shares[2] = 1.0
    cuts = np.quantile(field[ground], np.clip(np.cumsum(shares / shares.sum())[:2], 0, 1))
    labels = np.full(ground.shape, 2, dtype=np.uint8)  # grass
    labels[field < cuts[1]] = 3  # sand
    labels[field < cuts[0]] = 4  # water
    labels[~ground] = 0
    return labels


def _render_ade_image(rng: np.random.Generator, width: int, height: int,
                      boundary_ignore: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a scene and its label map (0 ignore, 1..K classes)."""
    x, y = _coords(height, width)
    base = rng.uniform(0.25, 0.55) * height
    wave = sum(rng.uniform(0, 0.04) * height *
               np.sin(2 * math.pi * x[0] / rng.uniform(40, 200) + rng.uniform(0, 6.3))
               for _ in range(2))
    horizon = base + wave
    ground = y >= horizon[None, :]

    labels = _ground_labels(rng, ground)
    labels[~ground] = 1  # sky
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    layers = {1: _sky(rng, height, width, float(base)), 2: _grass(rng, height, width),
              3: _sand(rng, height, width), 4: _water(rng, height, width)}
    for value, texture in layers.items():
        region = labels == value
        canvas[region] = texture[region]

    first_shape = SEG_CLASSES.index(_SEG_SHAPES[0]) + 1
    for _ in range(int(rng.choice(4, p=[0.1, 0.35, 0.35, 0.2]))):
        kind = int(rng.integers(len(_SEG_SHAPES)))
        outline = _sample_outline(rng, _SEG_SHAPES[kind], width, height, (0.1, 0.3))
        mask = _rasterize(outline, width, height)
        if not mask.any():
            continue
        colour = _contrasting_color(rng, canvas[mask].mean(axis=0), min_distance=70)
        canvas[mask] = _object_fill(rng, height, width, colour)[mask]
        labels[mask] = first_shape + kind
        if boundary_ignore:
            labels[mask & ~_erode(mask)] = 0
    image = np.clip(canvas + rng.normal(0, 2, canvas.shape), 0, 255).astype(np.uint8)
    return image, labels
