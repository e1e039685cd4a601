"""One class, registered in both mmdet's and mmseg's MODELS registries.

Each registry is optional: the package works with only mmdet or only mmseg installed.
"""
from typing import Callable, List, Optional, Type

__all__ = ['register_model', 'model_registries']


def model_registries() -> List[object]:
    """The MODELS registries of the OpenMMLab libraries that are installed."""
    registries = []
    try:
        from mmdet.registry import MODELS as DET_MODELS
        registries.append(DET_MODELS)
    except ImportError:
        pass
    try:
        from mmseg.registry import MODELS as SEG_MODELS
        registries.append(SEG_MODELS)
    except ImportError:
        pass
    return registries


def register_model(name: Optional[str] = None) -> Callable[[Type], Type]:
    """Class decorator: register under ``name`` (default: the class name) everywhere."""

    def wrap(cls: Type) -> Type:
        for registry in model_registries():
            registry.register_module(name=name, module=cls, force=True)
        return cls

    return wrap
