"""Register a module in the MODELS registries of mmdet and mmseg, whichever are installed.

mmdet and mmseg each keep their own ``MODELS`` registry (children of mmengine's root), and a
config built under ``default_scope='mmdet'`` only looks in mmdet's. A neck shared by detection
and segmentation configs therefore goes into both; either library may be missing.
"""
import importlib
from typing import List, Type

# (library, module holding its MODELS registry)
_REGISTRIES = (('mmdet', 'mmdet.registry'), ('mmseg', 'mmseg.registry'))


def register_in_openmmlab(cls: Type) -> Type:
    """Class decorator: add ``cls`` to every installed OpenMMLab ``MODELS`` registry.

    Args:
        cls (type): the ``nn.Module`` subclass to register under its class name.

    Returns:
        type: ``cls`` itself, so this works as a decorator.
    """
    for _, registry_module in _REGISTRIES:
        try:
            models = importlib.import_module(registry_module).MODELS
        except ImportError:  # that library is not installed: nothing to register into
            continue
        # force=True keeps re-imports (e.g. importlib.reload in tests) from failing
        models.register_module(module=cls, force=True)
    return cls


def registered_scopes(cls: Type) -> List[str]:
    """Names of the installed libraries (``'mmdet'``, ``'mmseg'``) whose MODELS hold ``cls``.

    Args:
        cls (type): a class decorated with :func:`register_in_openmmlab`.

    Returns:
        list[str]: the scopes where ``cls.__name__`` resolves to ``cls``.
    """
    scopes = []
    for scope, registry_module in _REGISTRIES:
        try:
            models = importlib.import_module(registry_module).MODELS
        except ImportError:
            continue
        if models.module_dict.get(cls.__name__) is cls:
            scopes.append(scope)
    return scopes
