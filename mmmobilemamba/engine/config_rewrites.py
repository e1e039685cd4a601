"""Config changes ``tools/train.py`` and ``tools/test.py`` make for safer runs.

* :func:`apply_safety_hooks`: ``CheckpointHook`` -> :class:`AtomicCheckpointHook` (same
  arguments), a :class:`FiniteLossGuardHook` when the config has none;
* :func:`apply_safe_image_loading`: broken images skipped in training (with a warning naming
  them), an error naming them in val/test;
* :func:`skip_backbone_pretrained`: no ImageNet ``init_cfg`` read when ``load_from`` (or
  ``--resume``) brings the backbone's weights anyway.
"""
import os.path as osp
from typing import List, Sequence

from mmengine.config import Config
from mmengine.logging import print_log

from .config import iter_dataset_cfgs

__all__ = ['apply_safe_image_loading', 'apply_safety_hooks', 'skip_backbone_pretrained']


def _hook_list(hooks) -> List[dict]:
    return list(hooks) if hooks else []


def apply_safety_hooks(cfg: Config) -> None:
    """Make checkpoint writes atomic and stop on non-finite losses (see the module doc)."""
    checkpoint_hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(checkpoint_hook, dict) and checkpoint_hook.get('type') in (
            'CheckpointHook', 'mmengine.CheckpointHook'):
        checkpoint_hook['type'] = 'AtomicCheckpointHook'
    custom = _hook_list(cfg.get('custom_hooks'))
    if not any(h.get('type') == 'FiniteLossGuardHook' for h in custom if isinstance(h, dict)):
        custom.append(dict(type='FiniteLossGuardHook'))
    cfg.custom_hooks = custom


def skip_backbone_pretrained(cfg: Config) -> None:
    """Drop the backbone's ``Pretrained`` init_cfg when ``load_from`` holds backbone weights.

    mmengine initialises the weights (reading the ImageNet checkpoint) and then loads
    ``load_from`` over them: fine-tuning from a released detector/segmentor, or resuming,
    would otherwise need the ImageNet file too, only to overwrite it.
    """
    from mmmobilemamba.models.checkpoint import pretrained_checkpoint, state_dict_of
    backbone = (cfg.get('model') or {}).get('backbone')
    load_from = cfg.get('load_from')
    if not isinstance(backbone, dict) or not pretrained_checkpoint(backbone.get('init_cfg')):
        return
    if not load_from or not osp.isfile(load_from):  # remote or missing: mmengine reports it
        return
    try:
        state = state_dict_of(load_from, mmap=True)  # keys only: nothing read
    except Exception:  # not ours to judge here: the load_from check reports it in context
        return
    if not any(k.startswith('backbone.') for k in state):
        return
    print_log(f'The backbone\'s weights come from {load_from}: its ImageNet init_cfg checkpoint '
              f'({pretrained_checkpoint(backbone.init_cfg)}) is not loaded', logger='current')
    backbone.init_cfg = None


_LOADERS = ('LoadImageFromFile', 'mmcv.LoadImageFromFile')


def apply_safe_image_loading(cfg: Config, splits: Sequence[str]) -> None:
    """Training pipelines skip a broken image with a warning naming it; the others stop.

    ``LoadImageFromFile`` in mmdet/mmseg pipelines is already
    :class:`~.image_loading.CheckedLoadImageFromFile` (a broken image is an error naming it):
    training pipelines get ``on_error='skip'`` unless they say otherwise (val/test keep
    stopping: skipping would bias the metric), and mmcv's own loader written with its scope
    (``mmcv.LoadImageFromFile``) is replaced by it. The type name stays ``LoadImageFromFile``,
    so the config ``train.py`` dumps still works with mmdet's / mmseg's inferencers. Loaders of
    other types are left as they are.
    """
    for split in splits:
        # wrappers too: a MultiImageMixDataset has a pipeline of its own
        for _, ds_cfg in iter_dataset_cfgs(cfg, (split,), leaves_only=False):
            for step in ds_cfg.get('pipeline') or ():
                if isinstance(step, dict) and step.get('type') in _LOADERS:
                    step['type'] = 'LoadImageFromFile'
                    if split == 'train' and 'on_error' not in step:
                        step.pop('ignore_empty', None)  # superseded by on_error
                        step['on_error'] = 'skip'
