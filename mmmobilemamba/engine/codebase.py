"""Tell detection (mmdet) configs from segmentation (mmseg) ones and reach their registries."""
import importlib
from typing import Any

from mmengine.config import Config

CODEBASES = ('mmdet', 'mmseg')
_REGISTRY_MODULES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}


def get_registry(codebase: str, name: str) -> Any:
    """The registry ``name`` (e.g. ``'DATASETS'``) of ``codebase`` ('mmdet' or 'mmseg')."""
    if codebase not in _REGISTRY_MODULES:
        raise ValueError(f'unknown codebase {codebase!r}; expected one of {CODEBASES}')
    return getattr(importlib.import_module(_REGISTRY_MODULES[codebase]), name)


def detect_codebase(cfg: Config) -> str:
    """``'mmdet'`` or ``'mmseg'`` for a config.

    ``default_scope`` decides when it names one of them (every mmdet/mmseg config sets it);
    otherwise the registry that knows ``model.type`` does.

    Raises:
        ValueError: when neither applies.
    """
    scope = cfg.get('default_scope')
    if scope in CODEBASES:
        return scope
    model_type = (cfg.get('model') or {}).get('type')
    if isinstance(model_type, str):
        for codebase in CODEBASES:
            models = get_registry(codebase, 'MODELS')
            # Search only the codebase's own registry: its parent (mmengine) is shared.
            models.import_from_location()
            if model_type in models.module_dict:
                return codebase
    raise ValueError(
        f'cannot tell whether {cfg.filename or "the config"} is a detection (mmdet) or a '
        f"segmentation (mmseg) config: set default_scope = 'mmdet' or 'mmseg' in it "
        f'(default_scope={scope!r}, model.type={model_type!r})')
