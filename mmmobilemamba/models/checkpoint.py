"""Checkpoints: read them safely, unwrap them, map the authors' layouts, compare with a model.

One module for every checkpoint question the package asks (engine, apis and tools use it):

* reading: :func:`load_checkpoint_file` (``torch.load`` with ``weights_only=True``),
  :func:`state_dict_of` (the tensors of an mmengine ``{'state_dict': ...}``, a release
  ``{'net', 'net_E'}`` or a bare state dict) and :func:`unwrap_state_dict` (the same, narrowed
  to the backbone);
* the authors' layouts, mapped to ours by what they compute:

  - the released classification backbone (``patch_embed.0.c.weight``, ``blocks1.0...``,
    ``blocks2[0:3]`` the downsampling parts), alone or under ``backbone.`` in their
    detectors and segmentors: :func:`convert_backbone_keys`;
  - their detection neck ``EfficientViTFPN`` (``neck.extra_trans_convs.*``,
    ``neck.extra_fpn_convs.*``): :func:`convert_neck_keys`;
  - :func:`convert_official_checkpoint` (a backbone) and :func:`convert_official_model`
    (a whole detector/segmentor) apply them; keys already in our layout pass through.

  :class:`~mmmobilemamba.models.MobileMamba` and
  :class:`~mmmobilemamba.models.MobileMambaFPN` apply the same mapping when a state dict is
  loaded into them (``adapt_state_dict_keys``), so the authors' files load directly through
  ``load_from``, ``tools/test.py``, ``DetInferencer`` / ``MMSegInferencer`` and
  ``load_state_dict``;
* comparing: :func:`compare_with_model` says what of a checkpoint would load into a model
  (:class:`LoadReport`: missing, unexpected, shape mismatches);
* the backbone's ``init_cfg``: :func:`load_backbone_checkpoint`, :func:`pretrained_path`.
"""
import os
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

__all__ = ['convert_official_checkpoint', 'convert_official_model', 'convert_backbone_keys',
           'convert_neck_keys', 'load_backbone_checkpoint', 'unwrap_state_dict',
           'state_dict_of', 'load_checkpoint_file', 'compare_with_model', 'model_view',
           'LoadReport', 'drop_unbuilt_stages', 'pretrained_checkpoint', 'pretrained_path',
           'RELEASE_HINT']

StateDict = Dict[str, torch.Tensor]

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
_CLASSIFIER = re.compile(r'^(head|head_dist|dist_head)\.')
_FIXED_FILTERS = re.compile(r'(^|\.)(wt_filter|iwt_filter)$')
_OFFICIAL_BACKBONE = re.compile(r'^blocks[123]\.|(^|\.)c\.weight$')
# EfficientViTFPN: its transposed convs and their 3x3 output convs.
_OFFICIAL_NECK = re.compile(r'^extra_(trans|fpn)_convs\.\d+\.')
_STAGE_KEY = re.compile(r'^stages\.(\d+)\.')


# ------------------------------------------------------------------------------- reading
def load_checkpoint_file(path: Union[str, os.PathLike], mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: a downloaded file can never run code.

    mmengine training checkpoints load too: importing :mod:`mmmobilemamba` allow-lists the
    few classes they pickle (see :mod:`mmmobilemamba.engine.checkpoint_safety`).

    Args:
        path: the file.
        mmap (bool): map the tensors' storage instead of reading it (zip-format files, which
            ``torch.save`` writes since torch 1.6): keys and shapes for the price of the
            pickle alone. Default: False.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'MobileMamba checkpoint not found: {path}. {RELEASE_HINT}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError for foreign classes, RuntimeError for corrupt zips
        raise RuntimeError(
            f'could not load {path} safely (weights_only=True): {err}. If the file is a trusted '
            'release that pickles extra objects, convert it once with '
            'tools/model_converters/mobilemamba_official.py SRC DST --trust-source') from err


def _read(obj: Any, mmap: bool = False) -> Any:
    """A loaded checkpoint: ``obj`` itself, or the file it names."""
    return load_checkpoint_file(obj, mmap) if isinstance(obj, (str, os.PathLike)) else obj


def _located_state_dict(obj: Any) -> Tuple[Mapping, str]:
    """The mapping of tensors inside a checkpoint object, and where it was found."""
    if not isinstance(obj, Mapping):
        raise ValueError(f'a checkpoint must be a dict, got {type(obj).__name__}')
    if isinstance(obj.get('state_dict'), Mapping):
        return obj['state_dict'], "mmengine checkpoint ['state_dict']"
    if isinstance(obj.get('net_E'), Mapping) and obj['net_E']:
        return obj['net_E'], "release checkpoint ['net_E'] (EMA weights, preferred)"
    if isinstance(obj.get('net'), Mapping):
        return obj['net'], "release checkpoint ['net']"
    if isinstance(obj.get('model'), Mapping):
        return obj['model'], "checkpoint ['model']"
    return obj, 'bare state dict'


def state_dict_of(obj: Any, mmap: bool = False) -> StateDict:
    """The tensors of a checkpoint (a path or a loaded object), DDP's ``module.`` stripped.

    Accepts mmengine's ``{'state_dict': ..., 'meta': ...}``, the authors' release
    ``{'net': ..., 'net_E': ...}`` (EMA preferred), ``{'model': ...}`` and bare state dicts.
    ``mmap``: for a path, map the tensors instead of reading them (when only keys and shapes
    are wanted; see :func:`load_checkpoint_file`).
    """
    state, _ = _located_state_dict(_read(obj, mmap))
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items()
                       if isinstance(v, torch.Tensor))


def unwrap_state_dict(obj: Any, prefix: Optional[str] = None) -> Tuple[StateDict, str]:
    """Find the backbone state dict inside a checkpoint object.

    Args:
        obj: a loaded checkpoint (dict) or its path.
        prefix (str, optional): keep only keys under this prefix (stripped). By default the
            ``backbone.`` prefix of detection/segmentation checkpoints is found by itself.

    Returns:
        tuple[dict, str]: the state dict and a description of where it came from.
    """
    obj = _read(obj)
    _, source = _located_state_dict(obj)
    state = state_dict_of(obj)
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


# --------------------------------------------------------------------- the authors' layouts
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


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))


def _replace_under(state: Mapping[str, torch.Tensor], prefix: str,
                   convert: Callable[[StateDict], StateDict]) -> StateDict:
    """``state`` with the keys under ``prefix`` replaced by ``convert`` of them (stripped)."""
    sub = _under(state, prefix)
    if not sub:
        return OrderedDict(state)
    out = OrderedDict((k, v) for k, v in state.items() if not k.startswith(prefix))
    out.update((prefix + k, v) for k, v in convert(sub).items())
    return out


def _backbone_to_ours(state: StateDict) -> StateDict:
    """Backbone keys (no prefix) in our layout: renamed if in the release's, filters dropped."""
    official = any(_OFFICIAL_BACKBONE.search(k) for k in state)
    return OrderedDict((_rename_official(k) if official else k, v) for k, v in state.items()
                       if not _FIXED_FILTERS.search(k))


def convert_backbone_keys(state: Mapping[str, torch.Tensor], prefix: str = '') -> StateDict:
    """Map the keys under ``prefix`` from the authors' backbone layout to ours.

    The fixed wavelet filters (``wt_filter``/``iwt_filter``: Haar, rebuilt from pywt) are
    dropped; keys already in our layout pass through; keys outside ``prefix`` are kept.

    Args:
        state (Mapping[str, Tensor]): a state dict.
        prefix (str): where the backbone is, e.g. ``'backbone.'`` in a detector. Default: ''.

    Returns:
        dict[str, Tensor]: a new state dict.
    """
    return _replace_under(state, prefix, _backbone_to_ours)


def _neck_to_ours(state: StateDict) -> StateDict:
    """EfficientViTFPN keys (no prefix) in :class:`MobileMambaFPN`'s layout.

    By what their neck computes: ``extra_trans_convs.j`` upsample the merged stride-16 map
    one octave at a time (our ``deconv_levels.j.upsample``); ``extra_fpn_convs.i`` is the 3x3
    output conv of the transposed-conv output ``n-1-i`` (their pairing is crossed, finest
    output first); ``fpn_convs.i`` beyond the lateral convs are the extra coarser levels.
    """
    if not any(_OFFICIAL_NECK.match(k) for k in state):
        return OrderedDict(state)
    num_trans = len({k.split('.')[1] for k in state if k.startswith('extra_trans_convs.')})
    num_laterals = len({k.split('.')[1] for k in state if k.startswith('lateral_convs.')})
    out = OrderedDict()
    for key, value in state.items():
        kind, index, rest = (key.split('.', 2) + ['', ''])[:3]
        if kind == 'extra_trans_convs':
            key = f'deconv_levels.{index}.upsample.{rest}'
        elif kind == 'extra_fpn_convs':
            key = f'deconv_levels.{num_trans - 1 - int(index)}.fpn_conv.{rest}'
        elif kind == 'fpn_convs' and int(index) >= num_laterals:
            key = f'extra_convs.{int(index) - num_laterals}.{rest}'
        out[key] = value
    return out


def convert_neck_keys(state: Mapping[str, torch.Tensor], prefix: str = 'neck.') -> StateDict:
    """Map the keys under ``prefix`` from the authors' ``EfficientViTFPN`` to ours.

    Args:
        state (Mapping[str, Tensor]): a state dict.
        prefix (str): where the neck is. Default: ``'neck.'``.

    Returns:
        dict[str, Tensor]: a new state dict; other keys, and necks already in our layout,
        unchanged.
    """
    return _replace_under(state, prefix, _neck_to_ours)


def convert_official_checkpoint(obj: Any, prefix: Optional[str] = None) -> StateDict:
    """Map a released / downstream / own checkpoint to this package's backbone keys.

    Args:
        obj: a checkpoint object, a state dict or a path (see the module docstring for the
            layouts).
        prefix (str, optional): key prefix of the backbone inside a larger state dict.

    Returns:
        dict[str, Tensor]: the backbone state dict, classifier head and fixed wavelet filters
        dropped.
    """
    state, _ = unwrap_state_dict(obj, prefix)
    return convert_backbone_keys(OrderedDict((k, v) for k, v in state.items()
                                             if not _CLASSIFIER.match(k)))


def convert_official_model(obj: Any) -> StateDict:
    """Map a released whole detector or segmentor to the state dict of our matching model.

    Every key is kept: the backbone (``backbone.``) and the authors' ``EfficientViTFPN`` neck
    (``neck.``) are renamed, the heads (mmdet/mmseg modules) and keys already in our layout
    pass through, the fixed wavelet filters are dropped.

    Args:
        obj: a path, mmengine's ``{'state_dict': ..., 'meta': ...}`` or a bare state dict.

    Returns:
        dict[str, Tensor]: the state dict, ready for ``load_state_dict`` of the model built
        from our matching config.

    Raises:
        ValueError: when there is no ``backbone.`` key (a backbone-only file: use
            :func:`convert_official_checkpoint`).
    """
    state = state_dict_of(obj)
    if not any(k.startswith('backbone.') for k in state):
        raise ValueError('not a detector/segmentor checkpoint (no key starts with '
                         f'"backbone."; keys look like {_summarise(list(state), 3)}). For a '
                         'backbone or classification file use convert_official_checkpoint')
    return convert_neck_keys(convert_backbone_keys(state, 'backbone.'), 'neck.')


def drop_unbuilt_stages(state: Mapping[str, torch.Tensor], num_stages: int,
                        prefix: str = '') -> Tuple[StateDict, List[int]]:
    """Remove the keys of backbone stages ``>= num_stages`` (our layout, under ``prefix``).

    A backbone whose ``out_indices`` end before its last stage does not build the later
    stages; their weights (e.g. the third stage of the authors' SSDLite, computed and
    discarded there) have nothing to load into.

    Returns:
        tuple[dict, list[int]]: the state dict and the stage indices whose keys were dropped.
    """
    out, dropped = OrderedDict(), set()
    for key, value in state.items():
        match = _STAGE_KEY.match(key[len(prefix):]) if key.startswith(prefix) else None
        if match and int(match.group(1)) >= num_stages:
            dropped.add(int(match.group(1)))
            continue
        out[key] = value
    return out, sorted(dropped)


# --------------------------------------------------------------------- comparing with a model
def model_view(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` as ``model.load_state_dict`` sees it once every module adapted its keys.

    Modules with an ``adapt_state_dict_keys(state_dict, prefix)`` method (MobileMamba,
    MobileMambaFPN) rename foreign layouts when loading; this applies them in the same order
    (parents first) without loading anything.
    """
    model = getattr(model, 'module', model)  # DDP
    view = OrderedDict(state)
    for name, module in model.named_modules():
        adapt = getattr(module, 'adapt_state_dict_keys', None)
        if callable(adapt):
            adapt(view, f'{name}.' if name else '', log=False)
    return view


def _summarise(keys: List[str], limit: int = 20) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


@dataclass
class LoadReport:
    """What of a checkpoint loads into a model (see :func:`compare_with_model`).

    Args:
        loaded (list[str]): keys with the model's name and shape.
        missing (list[str]): model keys the checkpoint lacks.
        unexpected (list[str]): checkpoint keys the model lacks.
        mismatched (list[tuple[str, tuple, tuple]]): ``(key, checkpoint shape, model shape)``.
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Every key on both sides, every shape equal."""
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, reason: Callable[[str], str] = lambda key: 'shape differs',
              limit: int = 10) -> List[str]:
        """One line per shape mismatch, then one per list of missing / unexpected keys.

        Args:
            reason: why a mismatched key differs (by its name), e.g. 'num_classes differs'.
            limit: keys shown per list.
        """
        out = [f'skipped {key}: checkpoint {ckpt} vs model {own}, {reason(key)}; re-initialised'
               for key, ckpt, own in self.mismatched]
        if self.missing:
            out.append(f'{len(self.missing)} model tensors not in the checkpoint (kept at '
                       f'init): {_summarise(self.missing, limit)}')
        if self.unexpected:
            out.append(f'{len(self.unexpected)} checkpoint tensors unused by the model: '
                       f'{_summarise(self.unexpected, limit)}')
        return out


def compare_with_model(model: nn.Module, checkpoint: Any) -> LoadReport:
    """Compare a checkpoint with a model's state dict, as loading would see it.

    Args:
        model (nn.Module): the model (DDP-wrapped or not).
        checkpoint: a path (only its keys and shapes are read), a loaded checkpoint or a state
            dict, in our layout or the authors' (mapped as the model's modules map it when
            loading).

    Returns:
        LoadReport: the keys that load, and those missing, unexpected or of another shape
        (``num_batches_tracked`` counters never count as missing: mmengine skips them too).
    """
    own = getattr(model, 'module', model).state_dict()
    state = model_view(model, state_dict_of(checkpoint, mmap=True))
    report = LoadReport()
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    return report


# ----------------------------------------------------------------------- backbone init_cfg
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


def load_backbone_checkpoint(model: nn.Module, checkpoint: Union[str, Mapping],
                             prefix: Optional[str] = None, logger: str = 'current',
                             require_all: bool = False) -> dict:
    """Load weights into a MobileMamba backbone with a report.

    Args:
        model (nn.Module): the backbone.
        checkpoint (str | Mapping): a file path or a loaded checkpoint.
        prefix (str, optional): backbone key prefix inside the checkpoint. By default
            ``backbone.`` when a key starts with it, else the keys are the backbone's own.
        logger (str): mmengine logger name.
        require_all (bool): refuse a checkpoint that lacks any of the backbone's tensors
            (for exports: a tensor left at init would be exported silently). Default: False,
            missing tensors are reported and kept at init (fine-tuning).

    Returns:
        dict: ``loaded``, ``missing`` and ``unexpected`` key lists and the ``source``.

    Raises:
        ValueError: when no tensor would load, any shape differs, or (``require_all``) a
            tensor is missing; the message names them.
    """
    name = checkpoint if isinstance(checkpoint, str) else '<object>'
    obj = _read(checkpoint)
    _, source = unwrap_state_dict(obj, prefix)
    state = convert_official_checkpoint(obj, prefix)
    report = compare_with_model(model, state)
    if report.mismatched:
        shown = [f'{k}: checkpoint {c} vs model {m}' for k, c, m in report.mismatched]
        raise ValueError(f'checkpoint {name} does not fit this MobileMamba (wrong arch?); shape '
                         f'mismatches: {_summarise(shown, 10)}')
    if not report.loaded:
        raise ValueError(
            f'checkpoint {name} ({source}) has no tensor that this MobileMamba expects: '
            f'checkpoint keys look like {_summarise(list(state), 5)}; model keys look like '
            f'{_summarise(list(model.state_dict()), 5)}')
    if require_all and report.missing:
        raise ValueError(
            f'checkpoint {name} ({source}) lacks {len(report.missing)} of the '
            f'{len(report.loaded) + len(report.missing)} tensors of this MobileMamba: '
            f'{_summarise(report.missing, 10)}. Use a checkpoint of the whole model of this '
            'config or of its backbone alone (keys "backbone.*" or bare), with the arch the '
            'config names.')
    # strict=False: missing and unexpected keys are reported below, in our words
    model.load_state_dict(state, strict=False)
    print_log(f'MobileMamba: loaded {len(report.loaded)}/{len(model.state_dict())} tensors from '
              f'{name} ({source})', logger=logger)
    if report.missing:
        print_log(f'MobileMamba: missing in checkpoint (kept at init): '
                  f'{_summarise(report.missing)}', logger=logger, level=30)
    if report.unexpected:
        print_log(f'MobileMamba: unexpected in checkpoint (ignored): '
                  f'{_summarise(report.unexpected)}', logger=logger, level=30)
    return dict(loaded=report.loaded, missing=report.missing, unexpected=report.unexpected,
                source=source)
