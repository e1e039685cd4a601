"""Find dataset and config problems before a training run trips over them.

Two depths:

* :func:`check_class_counts` and :func:`check_dataset_paths` (cheap, no data read;
  ``tools/train.py`` runs them before every run): the number of classes of each dataset (its
  metainfo ``classes``) against every head's ``num_classes`` in the model config, naming both
  numbers and the config key to change; annotation files and image/label folders that do not
  exist, naming the config keys that produced the path.
* :func:`check_dataset_config` (``tools/misc/check_dataset.py``): additionally reads the
  annotations of the train/val datasets. Detection (COCO-style JSON): boxes with non-positive
  size or outside their image, category ids missing from ``categories``, classes missing from
  the JSON or listed in another order (mmdet numbers labels in JSON order), RLE masks whose size
  is not the image's, polygons that are malformed or lie outside their image. Segmentation:
  empty sample lists. With ``full=True`` every image is decoded (missing, unreadable, corrupt,
  size differing from the annotation) and every segmentation map is read (missing, size
  differing from its image, label values that are neither a class index nor the ignore index,
  after ``reduce_zero_label``/``label_map``).

Problems are ``error`` (training would crash or silently learn something wrong) or
``warning`` (mmdet silently drops the annotation, or it is merely unusual).
"""
import copy
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import mmengine
import numpy as np
from mmengine.config import Config
from mmengine.registry import DefaultScope

from .config import SPLITS, detect_codebase, get_registry, iter_dataset_cfgs
from .image_loading import ImageLoadError, load_image

ERROR = 'error'
WARNING = 'warning'
MIN_IMAGE_SIDE = 64  # the backbone's largest stride
# Model sub-configs whose ``num_classes`` is not the dataset's class count.
_NOT_DATASET_CLASS_HEADS = ('backbone', 'neck', 'rpn_head', 'semantic_head', 'data_preprocessor',
                            'train_cfg', 'test_cfg', 'init_cfg')
_MAX_LISTED_VALUES = 10


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        severity: ``'error'`` or ``'warning'``.
        source: The file or config key the problem is in.
        message: What is wrong and, where possible, what to change.
    """
    severity: str
    source: str
    message: str

    def __str__(self) -> str:
        return f'[{self.severity.upper()}] {self.source}: {self.message}'


def has_errors(problems: Iterable[Problem]) -> bool:
    """Whether any problem is an error."""
    return any(p.severity == ERROR for p in problems)


def format_report(problems: Sequence[Problem]) -> str:
    """Human-readable listing of ``problems`` followed by a one-line summary."""
    errors = sum(p.severity == ERROR for p in problems)
    lines = [str(p) for p in problems]
    lines.append(f'{errors} error(s), {len(problems) - errors} warning(s)')
    return '\n'.join(lines)


def head_num_classes(model_cfg: dict, prefix: str = 'model') -> List[Tuple[str, int]]:
    """Every ``num_classes`` of the model's heads (and losses), as ``(config key, value)``.

    List entries use their index in the key (``model.auxiliary_head.0.num_classes``), which is
    the form ``--cfg-options`` accepts. Backbone, neck, RPN (class-agnostic) and HTC's semantic
    head are skipped.
    """
    found: List[Tuple[str, int]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name in _NOT_DATASET_CLASS_HEADS:
                    continue
                if name == 'num_classes' and isinstance(value, int):
                    found.append((f'{path}.{name}', value))
                else:
                    walk(value, f'{path}.{name}')
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f'{path}.{i}')

    walk(model_cfg, prefix)
    return found


def build_dataset_lazily(ds_cfg: dict, codebase: str) -> Any:
    """Instantiate a leaf dataset without loading annotations or building its pipeline."""
    ds_cfg = copy.deepcopy(dict(ds_cfg))
    ds_cfg.update(pipeline=[], lazy_init=True)
    # Registry.build looks names up in the *current* default scope, whatever registry it is
    # called on: make it the config's codebase.
    with DefaultScope.overwrite_default_scope(codebase):
        return get_registry(codebase, 'DATASETS').build(ds_cfg)


def _dataset_classes(dataset: Any) -> Optional[List[str]]:
    classes = dataset.metainfo.get('classes')
    return None if classes is None else list(classes)


# ------------------------------------------------------------------------ class-count check
def check_class_counts(cfg: Config, splits: Sequence[str] = SPLITS) -> List[Problem]:
    """Compare each dataset's class count with every head's ``num_classes``.

    Cheap: datasets are instantiated without reading annotations or images.

    Args:
        cfg: A full mmdet/mmseg config (``custom_imports`` already imported).
        splits: Dataloaders to look at.

    Returns:
        One error per mismatching head (per distinct dataset class count), naming the dataset
        key, both numbers and the ``--cfg-options`` fix; errors for datasets that cannot be
        instantiated; a warning when a dataset's classes are unknown.
    """
    codebase = detect_codebase(cfg)
    heads = head_num_classes(cfg.get('model') or {})
    problems: List[Problem] = []
    counts: Dict[int, Tuple[str, List[str]]] = {}  # class count -> first dataset key having it
    for key, ds_cfg in iter_dataset_cfgs(cfg, splits):
        try:
            classes = _dataset_classes(build_dataset_lazily(ds_cfg, codebase))
        except Exception as err:  # a config error the user must see, whatever its type
            problems.append(Problem(ERROR, key, f'cannot build the dataset: {err}'))
            continue
        if classes is None:
            problems.append(Problem(WARNING, key, 'dataset metainfo has no classes; set '
                                    'metainfo=dict(classes=(...)) to check num_classes'))
            continue
        counts.setdefault(len(classes), (key, classes))
    for count, (key, classes) in sorted(counts.items()):
        for head_key, num_classes in heads:
            if num_classes != count:
                problems.append(_class_count_problem(head_key, num_classes, key, classes))
    if len(counts) > 1:
        listing = ', '.join(f'{key}: {n}' for n, (key, _) in sorted(counts.items()))
        problems.append(Problem(ERROR, 'metainfo', f'datasets disagree on the number of classes '
                                f'({listing}); give them the same metainfo classes'))
    return problems


def _class_count_problem(head_key: str, num_classes: int, ds_key: str,
                         classes: List[str]) -> Problem:
    shown = ', '.join(map(str, classes[:_MAX_LISTED_VALUES]))
    if len(classes) > _MAX_LISTED_VALUES:
        shown += ', ...'
    return Problem(
        ERROR, head_key,
        f'{num_classes} in the model, but {ds_key} has {len(classes)} classes ({shown}). '
        f'Set {head_key}={len(classes)} in the config (or pass --cfg-options '
        f'{head_key}={len(classes)}), or change the dataset metainfo classes.')


# ------------------------------------------------------------------------- dataset paths
_DEMO_DATA_HINT = ('the built-in demo data is generated by '
                   '`python tools/misc/generate_demo_data.py` (or `make demo`)')


def check_dataset_paths(cfg: Config, splits: Sequence[str] = SPLITS) -> List[Problem]:
    """Errors for local annotation files and data folders of the datasets that do not exist.

    Cheap: only the file system is asked. Paths are taken from the lazily built datasets, so
    they are what the dataset would open (``data_root`` joined with ``ann_file`` and each
    ``data_prefix`` entry). Datasets on remote storage (``backend_args``, ``s3://...``) are
    skipped.

    Args:
        cfg: A full mmdet/mmseg config.
        splits: Dataloaders whose datasets are checked.

    Returns:
        One error per missing path, naming the config keys to fix; nothing when all exist.
    """
    codebase = detect_codebase(cfg)
    problems: List[Problem] = []
    reported = set()
    for key, ds_cfg in iter_dataset_cfgs(cfg, splits):
        try:
            dataset = build_dataset_lazily(ds_cfg, codebase)
        except Exception:
            continue  # check_class_counts reports datasets that cannot be built
        for path, field, is_file in _dataset_paths(dataset, ds_cfg):
            if path in reported or _is_remote(path, dataset):
                continue
            if osp.isfile(path) if is_file else osp.isdir(path):
                continue
            reported.add(path)
            what = 'annotation file' if is_file else 'data folder'
            made_of = f"data_root={ds_cfg.get('data_root')!r}"
            if field != 'data_root':
                made_of += f' + {field}={_field_value(ds_cfg, field)!r}'
            hint = f'; {_DEMO_DATA_HINT}' if ('demo_coco' in path or 'demo_ade' in path) else ''
            problems.append(Problem(
                ERROR, f'{key}.{field}', f'{what} {path} does not exist ({made_of}); fix '
                f'data_root or {field} of {key} in the config{hint}'))
    return problems


def _field_value(ds_cfg: dict, field: str) -> Any:
    value: Any = ds_cfg
    for part in field.split('.'):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _dataset_paths(dataset: Any, ds_cfg: dict) -> Iterator[Tuple[str, str, bool]]:
    """``(path, config field it comes from, is a file)`` of what ``dataset`` reads."""
    if getattr(dataset, 'ann_file', ''):
        yield str(dataset.ann_file), 'ann_file', True
    prefixes = getattr(dataset, 'data_prefix', None) or {}
    for name, prefix in prefixes.items():
        if isinstance(prefix, str) and prefix:
            yield prefix, f'data_prefix.{name}', False
    if not getattr(dataset, 'ann_file', '') and ds_cfg.get('data_root') and not any(
            prefixes.values()):
        yield str(ds_cfg['data_root']), 'data_root', False


def _is_remote(path: str, dataset: Any) -> bool:
    backend = (getattr(dataset, 'backend_args', None) or {}).get('backend', 'local')
    return '://' in path or backend not in ('local', 'disk')


# ------------------------------------------------------------------------ full dataset check
def check_dataset_config(cfg: Config,
                         full: bool = False,
                         splits: Sequence[str] = ('train', 'val')) -> List[Problem]:
    """Class counts plus annotation checks of the ``splits`` datasets (see the module doc).

    Args:
        cfg: A full mmdet/mmseg config.
        full: Also decode every image and read every segmentation map (slow: reads all data).
        splits: Dataloaders whose datasets are checked (class counts use train/val/test).

    Returns:
        All problems found, errors and warnings, in dataset order.
    """
    problems = check_class_counts(cfg)
    missing = check_dataset_paths(cfg, splits)
    problems += missing
    codebase = detect_codebase(cfg)
    seen = set()
    for key, ds_cfg in iter_dataset_cfgs(cfg, splits):
        if any(p.source == f'{key}.ann_file' for p in missing):
            continue  # nothing more to say about a dataset without its annotation file
        try:
            dataset = build_dataset_lazily(ds_cfg, codebase)
        except Exception:
            continue  # already reported by check_class_counts
        identity = (type(dataset).__name__, str(dataset.ann_file), repr(dataset.data_prefix))
        if identity in seen:  # e.g. val and test reading the same files
            continue
        seen.add(identity)
        problems += _check_dataset(dataset, key, codebase, full)
    return problems


def _check_dataset(dataset: Any, key: str, codebase: str, full: bool) -> List[Problem]:
    if codebase == 'mmdet':
        from mmdet.datasets import CocoDataset
        if isinstance(dataset, CocoDataset):
            return check_coco_dataset(dataset, full)
    else:
        from mmseg.datasets import BaseSegDataset
        if isinstance(dataset, BaseSegDataset):
            return check_seg_dataset(dataset, full)
    return [Problem(WARNING, key, f'{type(dataset).__name__} annotations are not checked '
                    '(only COCO-style detection and mmseg segmentation datasets are)')]


# COCO-style detection ---------------------------------------------------------------------
def check_coco_dataset(dataset: Any, full: bool = False) -> List[Problem]:
    """Check a (lazily built) mmdet ``CocoDataset``'s JSON and, if ``full``, its images."""
    ann_file = dataset.ann_file
    try:
        coco = mmengine.load(ann_file, file_format='json', backend_args=dataset.backend_args)
    except Exception as err:
        return [Problem(ERROR, ann_file, f'cannot read the annotation file: {err}')]
    classes = _dataset_classes(dataset) or []
    problems = _check_coco_categories(coco, classes, ann_file)
    images = {img.get('id'): img for img in coco.get('images', [])}
    problems += _check_coco_image_entries(images.values(), ann_file)
    known_cats = {cat.get('id') for cat in coco.get('categories', [])}
    for ann in coco.get('annotations', []):
        problems += _check_coco_annotation(ann, images, known_cats, ann_file)
    if full:
        for img in images.values():
            path = osp.join(dataset.data_prefix.get('img', ''), str(img.get('file_name')))
            problems += _check_image_file(path, img.get('height'), img.get('width'),
                                          dataset.backend_args)
    return problems


def _check_coco_categories(coco: dict, classes: List[str], ann_file: str) -> List[Problem]:
    problems = []
    names = [cat.get('name') for cat in coco.get('categories', [])]
    missing = [c for c in classes if c not in names]
    if missing:
        problems.append(Problem(
            ERROR, ann_file, f'classes {missing} of the config are not categories of this file '
            f'(its categories: {names[:_MAX_LISTED_VALUES]}{"..." if len(names) > 10 else ""}); '
            'label indices would shift'))
    in_json_order = [n for n in names if n in classes]
    if not missing and in_json_order != list(classes):
        problems.append(Problem(
            ERROR, ann_file, f'the config lists classes in another order than the file\'s '
            f'categories (mmdet numbers labels in file order: {in_json_order}); reorder '
            'metainfo classes to match'))
    unused = {cat.get('id'): cat.get('name') for cat in coco.get('categories', [])
              if cat.get('name') not in classes}
    if unused:
        counts = _count_by(a.get('category_id') for a in coco.get('annotations', []))
        used = {name: counts[cid] for cid, name in unused.items() if counts.get(cid)}
        if used:
            problems.append(Problem(
                WARNING, ann_file, f'annotations of categories not in the config classes are '
                f'ignored by mmdet: {used}'))
    return problems


def _count_by(values: Iterable[Any]) -> Dict[Any, int]:
    counts: Dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _check_coco_image_entries(images: Iterable[dict], ann_file: str) -> List[Problem]:
    problems = []
    for img in images:
        name = img.get('file_name', f'image id {img.get("id")}')
        height, width = img.get('height'), img.get('width')
        if not isinstance(height, (int, float)) or not isinstance(width, (int, float)) \
                or height <= 0 or width <= 0:
            problems.append(Problem(ERROR, f'{ann_file}: {name}',
                                    f'image entry needs positive width and height, got '
                                    f'width={width} height={height}'))
        elif min(height, width) < MIN_IMAGE_SIDE:
            problems.append(Problem(WARNING, f'{ann_file}: {name}',
                                    f'image is {width}x{height}, smaller than the backbone '
                                    f'stride {MIN_IMAGE_SIDE}: most detail is lost'))
    return problems


def _check_coco_annotation(ann: dict, images: Dict[Any, dict], known_cats: set,
                           ann_file: str) -> List[Problem]:
    ann_id = ann.get('id')
    img = images.get(ann.get('image_id'))
    if img is None:
        return [Problem(ERROR, ann_file, f'annotation {ann_id} refers to image id '
                        f'{ann.get("image_id")}, which is not in "images"')]
    where = f'{ann_file}: {img.get("file_name")} (annotation {ann_id})'
    problems = []
    if ann.get('category_id') not in known_cats:
        problems.append(Problem(ERROR, where, f'category_id {ann.get("category_id")} is not in '
                                '"categories"'))
    problems += _check_coco_box(ann.get('bbox'), img, where)
    seg = ann.get('segmentation')
    if isinstance(seg, dict) and 'size' in seg:
        if list(seg['size']) != [img.get('height'), img.get('width')]:
            problems.append(Problem(ERROR, where, f'RLE mask size (h, w) {list(seg["size"])} '
                                    f'differs from the image\'s '
                                    f'{[img.get("height"), img.get("width")]}'))
    elif isinstance(seg, list):
        problems += _check_coco_polygons(seg, img, where)
    return problems


def _check_coco_polygons(polygons: list, img: dict, where: str) -> List[Problem]:
    """Polygons need x, y pairs (>= 3 points) and must overlap their image."""
    width, height = img.get('width') or 0, img.get('height') or 0
    problems = []
    for i, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2 or \
                not all(isinstance(v, (int, float)) for v in poly):
            size = len(poly) if isinstance(poly, (list, tuple)) else type(poly).__name__
            problems.append(Problem(ERROR, where, f'polygon {i} of the mask has {size} values: '
                                    'it needs x, y pairs of at least 3 points'))
            continue
        xs, ys = poly[0::2], poly[1::2]
        if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
            problems.append(Problem(ERROR, where, f'polygon {i} of the mask lies outside the '
                                    f'{width}x{height} image (x {min(xs)}..{max(xs)}, '
                                    f'y {min(ys)}..{max(ys)}): the mask does not match its image'))
        elif min(xs) < -1 or min(ys) < -1 or max(xs) > width + 1 or max(ys) > height + 1:
            problems.append(Problem(WARNING, where, f'polygon {i} of the mask extends beyond the '
                                    f'{width}x{height} image: it is clipped'))
    return problems


def _check_coco_box(bbox: Any, img: dict, where: str) -> List[Problem]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return [Problem(ERROR, where, f'bbox must be [x, y, w, h], got {bbox!r}')]
    x, y, w, h = bbox
    width, height = img.get('width') or 0, img.get('height') or 0
    if w <= 0 or h <= 0:
        return [Problem(ERROR, where, f'box {bbox} has non-positive size (w={w}, h={h})')]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return [Problem(ERROR, where, f'box {bbox} lies outside the {width}x{height} image')]
    problems = []
    if w < 1 or h < 1:
        problems.append(Problem(WARNING, where, f'box {bbox} is under 1 px wide or high: '
                                'mmdet drops it'))
    # One pixel of slack: many tools round box corners outwards.
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        problems.append(Problem(WARNING, where, f'box {bbox} extends beyond the '
                                f'{width}x{height} image'))
    return problems


def _check_image_file(path: str, height: Any, width: Any,
                      backend_args: Optional[dict]) -> List[Problem]:
    try:
        img = load_image(path, backend_args=backend_args)
    except ImageLoadError as err:
        return [Problem(ERROR, path, str(err))]
    if height is not None and width is not None and tuple(img.shape[:2]) != (height, width):
        hint = ' (rotated: EXIF orientation?)' if tuple(img.shape[:2]) == (width, height) else ''
        return [Problem(ERROR, path, f'decoded image is {img.shape[1]}x{img.shape[0]} but the '
                        f'annotation says {width}x{height}{hint}')]
    return []


# mmseg segmentation -----------------------------------------------------------------------
def check_seg_dataset(dataset: Any, full: bool = False) -> List[Problem]:
    """Check a (lazily built) mmseg dataset: samples found and, if ``full``, every file."""
    source = str(dataset.ann_file or dataset.data_prefix.get('img_path', ''))
    try:
        data_list = dataset.load_data_list()
    except Exception as err:
        return [Problem(ERROR, source, f'cannot list the samples: {err}')]
    if not data_list:
        return [Problem(ERROR, source, f'no samples: no "*{dataset.img_suffix}" images in '
                        f'{dataset.data_prefix.get("img_path")}')]
    if not full:
        return []
    classes = _dataset_classes(dataset)
    num_classes = None if classes is None else len(classes)
    # mmseg maps removed classes (label_map) and reduce_zero_label's 0 to 255 itself.
    ignore = {dataset.ignore_index, 255}
    problems: List[Problem] = []
    for info in data_list:
        problems += _check_seg_sample(info, num_classes, ignore, dataset.backend_args)
    return problems


def _check_seg_sample(info: dict, num_classes: Optional[int], ignore: set,
                      backend_args: Optional[dict]) -> List[Problem]:
    try:
        img = load_image(info['img_path'], backend_args=backend_args)
    except ImageLoadError as err:
        return [Problem(ERROR, info['img_path'], str(err))]
    seg_path = info.get('seg_map_path')
    if not seg_path:
        return []
    try:
        seg = read_seg_map(seg_path, backend_args)
    except ImageLoadError as err:
        return [Problem(ERROR, seg_path, str(err))]
    if seg.shape[:2] != img.shape[:2]:
        return [Problem(ERROR, seg_path, f'mask is {seg.shape[1]}x{seg.shape[0]} but its image '
                        f'{info["img_path"]} is {img.shape[1]}x{img.shape[0]}')]
    if num_classes is None:
        return []
    reduce_zero_label = info.get('reduce_zero_label', False)
    labels = mmseg_training_labels(seg, reduce_zero_label, info.get('label_map'))
    values = set(np.unique(labels).tolist())
    bad = sorted(v for v in values if not 0 <= v < num_classes and v not in ignore)
    if bad:
        shown = f'{bad[:_MAX_LISTED_VALUES]}{"..." if len(bad) > _MAX_LISTED_VALUES else ""}'
        return [Problem(ERROR, seg_path, f'label values {shown} are neither a class index '
                        f'(0..{num_classes - 1}) nor the ignore index {sorted(ignore)} '
                        f'(after reduce_zero_label={reduce_zero_label})')]
    return []


def read_seg_map(path: str, backend_args: Optional[dict] = None) -> np.ndarray:
    """Read a segmentation map as mmseg's ``LoadAnnotations`` does (Pillow, unchanged)."""
    import mmcv
    import mmengine.fileio as fileio
    try:
        seg = mmcv.imfrombytes(fileio.get(path, backend_args=backend_args),
                               flag='unchanged', backend='pillow')
    except Exception as err:
        raise ImageLoadError(f'cannot read segmentation map {path}: {err}') from err
    if seg is None or seg.ndim not in (2, 3):
        raise ImageLoadError(f'cannot read segmentation map {path}: not a 2-D label image')
    return seg.squeeze()


def mmseg_training_labels(seg: np.ndarray, reduce_zero_label: bool,
                          label_map: Optional[Dict[int, int]]) -> np.ndarray:
    """The labels mmseg trains on: ``reduce_zero_label`` (0 -> 255, others -1), ``label_map``."""
    labels = seg.astype(np.int64)
    if reduce_zero_label:
        labels[labels == 0] = 255
        labels = labels - 1
        labels[labels == 254] = 255
    if label_map:
        original = labels.copy()
        for old, new in label_map.items():
            labels[original == old] = new
    return labels
