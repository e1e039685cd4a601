"""Model-side checks run before training: config keys, channel wiring, ``load_from``.

* :func:`check_model_config`: every argument given to one of our modules (MobileMamba,
  MobileMambaFPN, SSDLiteHead) is one it takes (a typo names the valid ones and the closest),
  and the backbone and neck are built once (no weights read) so that values out of range
  fail here with the module's own message instead of in the middle of the runner's set-up;
  then :func:`check_model_channels`.
* :func:`check_model_channels`: the channels MobileMamba gives (``arch`` + ``out_indices``)
  against what the neck (or, without a neck, the decode head) expects. A typo there would
  otherwise surface as a cryptic conv shape error at the first forward.
* :func:`load_from_report`: which tensors of a ``load_from`` checkpoint will not load into the
  model and why; the usual case is fine-tuning with another ``num_classes``, where the
  class-dependent head layers keep their fresh initialisation.
"""
import difflib
import inspect
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from ..models.checkpoint import compare_with_model
from .config import detect_codebase, get_registry
from .dataset_check import ERROR, Problem

__all__ = ['backbone_out_channels', 'check_model_channels', 'check_model_config',
           'is_class_dependent', 'load_from_report', 'mismatch_reason']
_OUR_PACKAGE = 'mmmobilemamba.'
_BUILT_PARTS = ('backbone', 'neck')


def backbone_out_channels(backbone_cfg: Mapping) -> Optional[List[int]]:
    """Channels of the outputs of a MobileMamba config, or None for other backbones.

    Raises:
        ValueError: for an invalid ``arch`` / ``out_indices`` (the backbone's own message).
    """
    if not isinstance(backbone_cfg, Mapping) or backbone_cfg.get('type') != 'MobileMamba':
        return None
    from mmmobilemamba.models.backbones.mobilemamba import _resolve_arch, _resolve_out_indices
    dims = _resolve_arch(backbone_cfg.get('arch', 'b1'))['embed_dims']
    out_indices = _resolve_out_indices(backbone_cfg.get('out_indices', (0, 1, 2)), len(dims))
    return [dims[i] for i in out_indices]


def _as_list(value: Any) -> Optional[List[int]]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _expected_by_head(head: Mapping, channels: List[int]) -> Optional[List[int]]:
    """What a head without a neck receives: ``in_index`` selects from the backbone outputs."""
    in_index = head.get('in_index', -1)
    indices = _as_list(in_index) or [-1]
    try:
        picked = [channels[i] for i in indices]
    except IndexError:
        return None
    return picked if isinstance(in_index, Sequence) else picked[:1]


def check_model_channels(cfg: Config) -> List[Problem]:
    """Compare MobileMamba's output channels with the neck's / heads' ``in_channels``.

    Args:
        cfg: a full mmdet/mmseg config.

    Returns:
        One error per mismatch, naming the config key, what it says, what the backbone gives
        and the value to set; an error for an invalid backbone config.
    """
    model = _unwrap_tta(cfg.get('model') or {})
    try:
        channels = backbone_out_channels(model.get('backbone'))
    except ValueError as err:
        return [Problem(ERROR, 'model.backbone', str(err))]
    if channels is None:
        return []
    backbone = model['backbone']
    gives = (f"MobileMamba(arch={backbone.get('arch', 'b1')!r}, "
             f"out_indices={tuple(backbone.get('out_indices', (0, 1, 2)))}) gives {channels}")
    neck = model.get('neck')
    targets = []  # (config key, expected list, declared list)
    if isinstance(neck, Mapping) and 'in_channels' in neck:
        targets.append(('model.neck.in_channels', channels, _as_list(neck['in_channels'])))
    elif neck is None:
        heads = [('model.decode_head', model.get('decode_head'))]
        aux = model.get('auxiliary_head')
        aux_list = aux if isinstance(aux, (list, tuple)) else [aux]
        aux_keys = ([f'model.auxiliary_head.{i}' for i in range(len(aux_list))]
                    if isinstance(aux, (list, tuple)) else ['model.auxiliary_head'])
        heads += list(zip(aux_keys, aux_list))
        for key, head in heads:
            if isinstance(head, Mapping) and 'in_channels' in head:
                want = _expected_by_head(head, channels)
                if want is None:
                    return [Problem(ERROR, f'{key}.in_index',
                                    f"{head.get('in_index')} selects a backbone output that "
                                    f'does not exist: {gives} ({len(channels)} outputs)')]
                targets.append((f'{key}.in_channels', want, _as_list(head['in_channels'])))
    problems = []
    for key, want, declared in targets:
        if declared is not None and declared != want:
            value = want if len(want) > 1 or key.startswith('model.neck') else want[0]
            problems.append(Problem(
                ERROR, key, f'is {declared} but {gives}; set {key}={value} '
                f'(or change the backbone arch/out_indices)'))
    return problems


def check_model_config(cfg: Config) -> List[Problem]:
    """Unknown arguments of our modules, backbone/neck build errors, then channel wiring.

    Args:
        cfg: a full mmdet/mmseg config.

    Returns:
        One error per problem, naming the config key and what is valid; empty when the model
        config is consistent.
    """
    model = _unwrap_tta(cfg.get('model') or {})
    codebase = detect_codebase(cfg)
    registry = get_registry(codebase, 'MODELS')
    problems = []
    with DefaultScope.overwrite_default_scope(codebase):
        for key, node, cls in _our_module_cfgs(model, 'model', registry):
            problems += _unknown_arguments(key, node, cls)
        if problems:
            return problems  # building would only repeat the first unknown argument
        for part in _BUILT_PARTS:
            node = model.get(part)
            if not isinstance(node, Mapping) or 'type' not in node:
                continue
            try:
                registry.build(node)
            except Exception as err:  # the module's own message says what is wrong
                problems.append(Problem(ERROR, f'model.{part}', f'cannot be built: {err}'))
    return problems or check_model_channels(cfg)


def _unwrap_tta(model: Mapping) -> Mapping:
    if model.get('type') in ('SegTTAModel', 'DetTTAModel') and 'module' in model:
        return model['module']
    return model


def _our_module_cfgs(node: Any, key: str, registry: Any) -> Iterator[Tuple[str, Mapping, type]]:
    """``(config key, config, class)`` of every sub-config whose type is one of our classes."""
    if isinstance(node, Mapping):
        kind = node.get('type')
        cls = registry.get(kind) if isinstance(kind, str) else kind
        if inspect.isclass(cls) and cls.__module__.startswith(_OUR_PACKAGE):
            yield key, node, cls
        for name, value in node.items():
            yield from _our_module_cfgs(value, f'{key}.{name}', registry)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _our_module_cfgs(value, f'{key}.{i}', registry)


def _accepted_arguments(cls: type) -> Optional[List[str]]:
    """The keyword arguments ``cls`` takes, or None when it takes any (``**kwargs``)."""
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return sorted(set(names))
        # **kwargs passed on to the parent (e.g. SSDLiteHead -> SSDHead): keep walking up.
    return None


def _unknown_arguments(key: str, node: Mapping, cls: type) -> List[Problem]:
    accepted = _accepted_arguments(cls)
    if accepted is None:
        return []
    problems = []
    for name in node:
        if name in ('type', '_scope_') or name in accepted:
            continue
        close = difflib.get_close_matches(name, accepted, n=1)
        guess = f' (did you mean {close[0]!r}?)' if close else ''
        problems.append(Problem(ERROR, f'{key}.{name}', f'{cls.__name__} has no argument '
                                f'{name!r}{guess}; valid arguments: {", ".join(accepted)}'))
    return problems


def load_from_report(model: torch.nn.Module, checkpoint: Any) -> List[str]:
    """Lines describing what of ``checkpoint`` will not load into ``model``, and why.

    Args:
        model: the model about to be loaded (``runner.model``, unwrapped from DDP).
        checkpoint: a loaded checkpoint (mmengine ``{'state_dict': ...}`` or a state dict), in
            our layout or the authors'.

    Returns:
        list[str]: empty when everything matches; else one line per skipped tensor (shape
        mismatch: kept at its initialisation), then summaries of missing / unexpected keys.
    """
    return compare_with_model(model, checkpoint).lines(reason=mismatch_reason)


def mismatch_reason(key: str) -> str:
    """Why a tensor of a checkpoint has another shape than the model's, judged by its name."""
    return ('class-dependent layer (num_classes differs)' if is_class_dependent(key)
            else 'shape differs')


def is_class_dependent(key: str) -> bool:
    """Whether a head tensor's shape follows ``num_classes`` (by its name)."""
    # fc_reg: R-CNN box regression is per class unless reg_class_agnostic
    names = ('cls', 'conv_seg', 'conv_logits', 'fc_cls', 'fc_reg', 'retina_cls', 'conv_cls')
    return any(n in key for n in names)
