"""Load MobileMamba weights from the authors' releases, downstream checkpoints or our own.

Accepted inputs (a path or an already loaded object):

* released classification files: ``{'net': sd, 'net_E': sd_ema}`` (EMA preferred) or a bare
  state dict, in the release's key layout (``patch_embed.0.c.weight``, ``blocks1.0...``);
* downstream detection/segmentation files: mmengine's ``{'state_dict': ...}`` with the backbone
  under ``backbone.`` (stages as ``blocks1/2/3``, ``blocks2[0:3]`` the downsampling parts);
* our own format (``stages.i...``), bare or wrapped the same ways.

:func:`convert_official_checkpoint` maps any of them to our key layout;
:func:`load_backbone_checkpoint` loads it into a model, logs what was loaded and raises when
nothing would load or a shape does not match.
"""
import os
import re
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

__all__ = ['convert_official_checkpoint', 'load_backbone_checkpoint', 'unwrap_state_dict',
           'load_checkpoint_file', 'pretrained_checkpoint', 'pretrained_path',
           'RELEASE_HINT']

RELEASE_HINT = (
    'Get the released MobileMamba weights from the authors\' release page (the '
    '"MobileMamba" GitHub repository, ImageNet classification checkpoints *.pth), then either '
    'point init_cfg=dict(type="Pretrained", checkpoint=PATH) at the file directly or convert '
    'it once: python tools/model_converters/mobilemamba_official.py SRC.pth DST.pth')

# The release's stage layout: blocks{2,3}[0] = (dw, ffn), [1] = patch merging,
# [2] = (dw, ffn), [3:] = blocks. Applied in order, first match per rule.
_STAGE_RULES: List[Tuple[str, Any]] = [
    (r'^blocks1\.(\d+)\.', lambda m: f'stages.0.blocks.{m.group(1)}.'),
    (r'^blocks([23])\.0\.0\.m\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.pre_dw.'),
    (r'^blocks([23])\.0\.1\.m\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.pre_ffn.'),
    (r'^blocks([23])\.1\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.merge.'),
    (r'^blocks([23])\.2\.0\.m\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.post_dw.'),
    (r'^blocks([23])\.2\.1\.m\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.post_ffn.'),
    (r'^blocks([23])\.(\d+)\.',
     lambda m: f'stages.{int(m.group(1)) - 1}.blocks.{int(m.group(2)) - 3}.'),
]
# Inside blocks: unwrap Residual(.m) and rename the mixer's parts.
_PART_RULES: List[Tuple[str, str]] = [
    (r'\.(dw0|dw1|ffn0|ffn1)\.m\.', r'.\1.'),
    (r'\.mixer\.m\.attn\.', '.mixer.'),
    (r'\.local_op\.dwconv3x3\.', '.local_branch.dwconvs.0.'),
    (r'\.local_op\.dwconv1x1\.', '.local_branch.dw1x1.'),
    (r'\.local_op\.', '.local_branch.'),
    (r'\.global_op\.global_atten\.', '.global_branch.ss2d.'),
    (r'\.global_op\.base_scale\.weight$', '.global_branch.ssm_scale'),
    (r'\.global_op\.wavelet_convs\.0\.weight$', '.global_branch.wavelet_conv.weight'),
    (r'\.global_op\.wavelet_scale\.0\.weight$', '.global_branch.wavelet_scale'),
    (r'\.mixer\.proj\.1\.', '.mixer.proj.'),
    (r'(^|\.)c\.weight$', r'\1conv.weight'),  # ConvBN's conv is "c" in the release
]
# Not backbone weights: the classifier and the fixed wavelet filters (rebuilt from pywt).
_DROP = re.compile(r'^(head|head_dist|dist_head)\.|(^|\.)(wt_filter|iwt_filter)$')
_OFFICIAL_MARKERS = re.compile(r'^blocks[123]\.|(^|\.)c\.weight$')


def _pretrained_entry(init_cfg: Any) -> Optional[Mapping]:
    """The first ``dict(type='Pretrained', ...)`` of ``init_cfg`` (a dict or a list), else None."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return next((cfg for cfg in cfgs
                 if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained'), None)


def pretrained_checkpoint(init_cfg: Any) -> Optional[str]:
    """The ``checkpoint`` of ``init_cfg``'s ``Pretrained`` entry, else None (no warning)."""
    entry = _pretrained_entry(init_cfg)
    return None if entry is None else entry.get('checkpoint')


def pretrained_path(init_cfg: Any) -> Optional[str]:
    """:func:`pretrained_checkpoint`, warning when a ``Pretrained`` entry has no checkpoint."""
    entry = _pretrained_entry(init_cfg)
    if entry is not None and entry.get('checkpoint') is None:
        # configs write `checkpoint=pretrained` with `pretrained = None` to train from
        # scratch: allowed, but never silently
        warnings.warn('MobileMamba: no pretrained checkpoint (pretrained=None): the '
                      'backbone trains from scratch. The paper\'s results need the '
                      'released ImageNet weights. ' + RELEASE_HINT, stacklevel=2)
        print_log('MobileMamba: training the backbone from scratch (pretrained=None)',
                  logger='current', level=30)
    return pretrained_checkpoint(init_cfg)


def load_checkpoint_file(path: str) -> Any:
    """``torch.load`` with ``weights_only=True``: a downloaded file can never run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'MobileMamba checkpoint not found: {path}. {RELEASE_HINT}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # UnpicklingError for foreign classes, RuntimeError for corrupt zips
        raise RuntimeError(
            f'could not load {path} safely (weights_only=True): {err}. If the file is a trusted '
            'release that pickles extra objects, convert it once with '
            'tools/model_converters/mobilemamba_official.py SRC DST --trust-source') from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, prefix: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """Find the backbone state dict inside a checkpoint object.

    Args:
        obj: a loaded checkpoint (dict).
        prefix (str, optional): keep only keys under this prefix (stripped). By default the
            ``backbone.`` prefix of detection/segmentation checkpoints is found by itself.

    Returns:
        tuple[dict, str]: the state dict and a description of where it came from.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f'a checkpoint must be a dict, got {type(obj).__name__}')
    source = 'bare state dict'
    if isinstance(obj.get('state_dict'), Mapping):
        obj, source = obj['state_dict'], "mmengine checkpoint ['state_dict']"
    elif isinstance(obj.get('net_E'), Mapping) and obj['net_E']:
        obj, source = obj['net_E'], "release checkpoint ['net_E'] (EMA weights, preferred)"
    elif isinstance(obj.get('net'), Mapping):
        obj, source = obj['net'], "release checkpoint ['net']"
    elif isinstance(obj.get('model'), Mapping):
        obj, source = obj['model'], "checkpoint ['model']"
    state = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in obj.items()
                        if isinstance(v, torch.Tensor))
    if not state:
        raise ValueError(f'no tensors found in the checkpoint ({source}); top-level keys: '
                         f'{list(obj)[:10]}')
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        if not state:
            raise ValueError(f'no key of the checkpoint starts with prefix {prefix!r}')
        source += f', prefix {prefix!r}'
    return state, source


def _rename_official(key: str) -> str:
    for pattern, repl in _STAGE_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            key = new
            break
    for pattern, repl in _PART_RULES:
        key = re.sub(pattern, repl, key)
    if key.startswith('patch_embed.'):
        key = re.sub(r'\.c\.', '.conv.', key)
    return key


def convert_official_checkpoint(obj: Any, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Map a released / downstream / own checkpoint to this package's backbone keys.

    Args:
        obj: a checkpoint object or state dict (see the module docstring for the layouts).
        prefix (str, optional): key prefix of the backbone inside a larger state dict.

    Returns:
        dict[str, Tensor]: the backbone state dict, classifier head and fixed wavelet filters
        dropped.
    """
    state, _ = unwrap_state_dict(obj, prefix)
    official = any(_OFFICIAL_MARKERS.search(k) for k in state)
    out = OrderedDict()
    for key, value in state.items():
        if _DROP.search(key):
            continue
        out[_rename_official(key) if official else key] = value
    return out


def _summarise(keys: List[str], limit: int = 20) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_backbone_checkpoint(model: nn.Module, checkpoint: Union[str, Mapping],
                             prefix: Optional[str] = None, logger: str = 'current') -> dict:
    """Load weights into a MobileMamba backbone with a report.

    Args:
        model (nn.Module): the backbone.
        checkpoint (str | Mapping): a file path or a loaded checkpoint.
        prefix (str, optional): backbone key prefix inside the checkpoint.
        logger (str): mmengine logger name.

    Returns:
        dict: ``loaded``, ``missing`` and ``unexpected`` key lists and the ``source``.

    Raises:
        ValueError: when no tensor would load or any shape differs; the message names them.
    """
    name = checkpoint if isinstance(checkpoint, str) else '<object>'
    obj = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    _, source = unwrap_state_dict(obj, prefix)
    state = convert_official_checkpoint(obj, prefix)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'checkpoint {name} does not fit this MobileMamba (wrong arch?); shape '
                         f'mismatches: {_summarise(mismatched, 10)}')
    loaded = [k for k in state if k in own]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not loaded:
        raise ValueError(
            f'checkpoint {name} ({source}) has no tensor that this MobileMamba expects: '
            f'checkpoint keys look like {_summarise(list(state), 5)}; model keys look like '
            f'{_summarise(list(own), 5)}')
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    print_log(f'MobileMamba: loaded {len(loaded)}/{len(own)} tensors from {name} ({source})',
              logger=logger)
    if missing:
        print_log(f'MobileMamba: missing in checkpoint (kept at init): {_summarise(missing)}',
                  logger=logger, level=30)
    if unexpected:
        print_log(f'MobileMamba: unexpected in checkpoint (ignored): {_summarise(unexpected)}',
                  logger=logger, level=30)
    return dict(loaded=loaded, missing=missing, unexpected=unexpected, source=source)
