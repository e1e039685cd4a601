"""Configs: read one, tell detection from segmentation, reach its registries, walk its datasets.

The command lines (``tools/``), the APIs (:mod:`mmmobilemamba.apis`, :mod:`.analysis`) and the
checks before a run (:mod:`.preflight`) all ask these questions of a config; this module
answers them once:

* :func:`load_config`: a config of its own, from a file or a ``Config``, with
  ``--cfg-options``-style overrides;
* :func:`detect_codebase`: ``'mmdet'`` or ``'mmseg'``; :func:`get_registry`: that library's
  registries;
* :func:`iter_dataset_cfgs`: every dataset config of the dataloaders, wrappers
  (``RepeatDataset``, ``ConcatDataset``, ``MultiImageMixDataset``...) walked through.
"""
import copy
import importlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

from mmengine.config import Config

__all__ = ['CODEBASES', 'SPLITS', 'ConfigError', 'load_config', 'detect_codebase',
           'get_registry', 'iter_dataset_cfgs']

CODEBASES = ('mmdet', 'mmseg')
SPLITS = ('train', 'val', 'test')
_REGISTRY_MODULES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}
_WRAPPER_CHILD_KEYS = ('dataset', 'datasets')


class ConfigError(ValueError):
    """A config that cannot be used as it is; the message says what to set."""


def load_config(config: Union[str, Path, Config], cfg_options: Optional[dict] = None) -> Config:
    """Read a config file (importing its ``custom_imports``), or copy a ``Config``.

    Args:
        config (str | Path | Config): a config file, a config shipped with an installed
            codebase (``'mmdet::regnet/retinanet_regnetx-800MF_fpn_1x_coco.py'``) or a loaded
            config (never modified).
        cfg_options (dict, optional): overrides in ``Config.merge_from_dict`` form, e.g.
            ``{'model.backbone.arch': 't2'}`` (what ``--cfg-options`` parses to).

    Returns:
        Config: a config of its own.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, str) and '::' in config:
        from mmengine.hub import get_config
        cfg = get_config(config)  # FileNotFoundError names the path it looked at
    else:
        if not Path(config).is_file():
            raise FileNotFoundError(f'config file not found: {config}')
        cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def get_registry(codebase: str, name: str) -> Any:
    """The registry ``name`` (e.g. ``'DATASETS'``) of ``codebase`` ('mmdet' or 'mmseg')."""
    if codebase not in _REGISTRY_MODULES:
        raise ValueError(f'unknown codebase {codebase!r}; expected one of {CODEBASES}')
    return getattr(importlib.import_module(_REGISTRY_MODULES[codebase]), name)


def detect_codebase(cfg: Config) -> str:
    """``'mmdet'`` for a detection config, ``'mmseg'`` for a segmentation config.

    ``default_scope`` decides (every mmdet/mmseg config sets it); without one, the library
    whose registry knows ``model.type``.

    Raises:
        ConfigError: for another ``default_scope``, or a model type neither library knows.
    """
    scope = cfg.get('default_scope')
    if scope in CODEBASES:
        return scope
    name = cfg.filename or 'the config'
    if scope is not None:
        raise ConfigError(f'{name}: default_scope={scope!r} is not supported; set '
                          f'default_scope to one of {CODEBASES}')
    model_type = (cfg.get('model') or {}).get('type')
    if isinstance(model_type, str):
        for codebase in CODEBASES:
            try:
                models = get_registry(codebase, 'MODELS')
            except ImportError:  # that library is not installed
                continue
            # search only the library's own registry: its parent (mmengine) is shared
            models.import_from_location()
            if model_type in models.module_dict:
                return codebase
    raise ConfigError(
        f'cannot tell whether {name} is a detection (mmdet) or a segmentation (mmseg) config: '
        f"set default_scope = 'mmdet' or 'mmseg' in it (model.type={model_type!r})")


def iter_dataset_cfgs(cfg: Config, splits: Sequence[str] = SPLITS,
                      leaves_only: bool = True) -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` of the datasets of the given splits' dataloaders.

    Args:
        cfg (Config): the config.
        splits (Sequence[str]): dataloaders to walk ('train', 'val', 'test').
        leaves_only (bool): only the datasets that read data (True), or the wrappers around
            them too, outermost first (False; e.g. a ``MultiImageMixDataset`` has a pipeline
            of its own).

    Keys use list indices (``train_dataloader.dataset.datasets.0``), the form
    ``--cfg-options`` accepts.
    """
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if loader and loader.get('dataset'):
            yield from _walk(loader['dataset'], f'{split}_dataloader.dataset', leaves_only)


def _walk(node: Any, key: str, leaves_only: bool) -> Iterator[Tuple[str, dict]]:
    if isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            yield from _walk(child, f'{key}.{i}', leaves_only)
        return
    if not isinstance(node, dict):
        return
    children = [k for k in _WRAPPER_CHILD_KEYS if k in node]
    if not children or not leaves_only:
        yield key, node
    for child in children:
        yield from _walk(node[child], f'{key}.{child}', leaves_only)
