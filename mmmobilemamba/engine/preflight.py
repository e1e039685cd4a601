"""What ``tools/train.py`` and ``tools/test.py`` check before anything runs.

:func:`preflight_problems` gathers, without reading any data or weights: the class counts of
datasets and heads, the dataset files and folders, the arguments and channel wiring of our
modules (:mod:`.dataset_check`, :mod:`.model_check`), on a GPU the mmcv ops the config needs
when the installed mmcv has CPU ops only (:mod:`.mmcv_ops_check`) and, for training, the
checkpoint files that initialise the model (:func:`check_checkpoint_files`).
"""
import os.path as osp
import re
from typing import List, Sequence

from mmengine.config import Config

from .dataset_check import ERROR, Problem, check_class_counts, check_dataset_paths
from .mmcv_ops_check import check_mmcv_cuda_ops
from .model_check import check_model_config

__all__ = ['check_checkpoint_files', 'is_missing_local_file', 'preflight_problems']


def preflight_problems(cfg: Config, splits: Sequence[str], training: bool) -> List[Problem]:
    """Every problem found in ``cfg`` before a run, errors and warnings.

    Args:
        cfg: The config about to run.
        splits: Dataloaders whose dataset files must exist (``('train', 'val')`` for training).
        training: Also check the checkpoint files that initialise the model (testing loads
            its checkpoint over everything and never reads ``init_cfg``).
    """
    problems = check_class_counts(cfg) + check_dataset_paths(cfg, splits)
    problems += check_model_config(cfg)
    problems += check_mmcv_cuda_ops(cfg)
    if training:
        problems += check_checkpoint_files(cfg)
    return problems


def check_checkpoint_files(cfg: Config) -> List[Problem]:
    """Errors for a local ``load_from`` or backbone ``init_cfg`` checkpoint that is missing."""
    from mmmobilemamba.models.checkpoint import RELEASE_HINT, pretrained_checkpoint
    problems = []
    load_from = cfg.get('load_from')
    if load_from and not cfg.get('resume') and is_missing_local_file(load_from):
        problems.append(Problem(ERROR, 'load_from', f'checkpoint {load_from} does not exist: '
                                'put the checkpoint there, or set load_from = None to start '
                                'from the ImageNet backbone (docs/finetune.md, section 4)'))
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    pretrained = pretrained_checkpoint(backbone.get('init_cfg'))
    if pretrained and is_missing_local_file(pretrained):
        problems.append(Problem(
            ERROR, 'model.backbone.init_cfg.checkpoint',
            f'ImageNet checkpoint {pretrained} does not exist. {RELEASE_HINT}. To train the '
            'backbone from scratch instead: model = dict(backbone=dict(init_cfg=None))'))
    if backbone.get('init_cfg') and _sets_pretrained_without_init_cfg(cfg) and \
            cfg.pretrained != pretrained:
        problems.append(Problem(
            ERROR, 'pretrained', f'is {cfg.pretrained!r} but the backbone loads {pretrained!r}: '
            'a variable set in a config does not change the model dict its _base_ built with '
            'it. Set model = dict(backbone=dict(init_cfg=dict(checkpoint=PATH))), or '
            'init_cfg=None to train from scratch'))
    return problems


def _sets_pretrained_without_init_cfg(cfg: Config) -> bool:
    """Whether the config file itself assigns ``pretrained`` but never writes an ``init_cfg``.

    That is the inheriting config that expects ``pretrained = ...`` to reach its base's model
    dict; a file that also writes ``init_cfg`` (the base configs, or a child following the
    docs) uses the variable itself or overrides the model directly.
    """
    if 'pretrained' not in cfg or not cfg.filename or not osp.isfile(cfg.filename):
        return False
    with open(cfg.filename, encoding='utf-8') as f:
        text = f.read()
    return bool(re.search(r'^pretrained\s*=', text, re.M)) and 'init_cfg' not in text


def is_missing_local_file(path: str) -> bool:
    """Whether ``path`` is a local path (no ``scheme://``) with no file there."""
    return '://' not in str(path) and not osp.isfile(path)
