"""A run on a GPU with an mmcv whose compiled ops are CPU-only: found before anything is built.

mmcv 2.1.0 compiled without CUDA (``make setup`` on a machine without GPU, or
``FORCE_CUDA=0``) imports and runs on CPU, but its ops (NMS, RoIAlign, sigmoid focal loss, ...)
have no CUDA kernels: a detector on the GPU stops at its first NMS or loss with a CUDA
dispatch error, mid-iteration. :func:`check_mmcv_cuda_ops` tells it from the config alone:
:func:`required_mmcv_ops` walks the model dict (no model is built) for the layers, losses and
``nms`` settings that call mmcv's compiled ops.
"""
from typing import Any, Dict, List, Optional

from mmengine.config import Config

from .dataset_check import ERROR, Problem

__all__ = ['check_mmcv_cuda_ops', 'mmcv_has_cuda_ops', 'required_mmcv_ops', 'runs_on_cuda']

# Config ``type``s whose modules call a compiled mmcv op, and that op's name in ``mmcv.ops``.
_TYPE_OPS = {
    'RoIAlign': 'roi_align',
    'RoIPool': 'roi_pool',
    'RoIAlignRotated': 'roi_align_rotated',
    'nms': 'nms',  # nms dicts: batched_nms calls mmcv.ops.<type>
    'soft_nms': 'soft_nms',
    'nms_rotated': 'nms_rotated',
    'DCN': 'deform_conv',
    'DeformConv2d': 'deform_conv',
    'DeformConv2dPack': 'deform_conv',
    'DCNv2': 'modulated_deform_conv',
    'ModulatedDeformConv2d': 'modulated_deform_conv',
    'ModulatedDeformConv2dPack': 'modulated_deform_conv',
    'carafe': 'carafe',
    'CARAFEPack': 'carafe',
    'MultiScaleDeformableAttention': 'ms_deform_attn',
}

REBUILD_HINT = (
    "Rebuild mmcv with CUDA ops: run `make setup` on this GPU machine (it builds them for the "
    "GPUs present; `FORCE_CUDA=1 make setup` when an earlier run fell back to CPU ops), or in "
    "your own environment install mmcv with FORCE_CUDA=1 (README.md, 'Installing into your own "
    "environment'). Or run on the CPU: CUDA_VISIBLE_DEVICES=''")


def required_mmcv_ops(cfg: Any, prefix: str = 'model') -> Dict[str, str]:
    """The compiled mmcv ops a model config calls, each with the first config key using it.

    Pure dict inspection: ``type``s of mmcv op layers (``RoIAlign`` in an RoI extractor's
    ``roi_layer``, deformable convs, ...), ``nms`` settings of ``test_cfg``/``train_cfg``
    (mmdet's ``batched_nms`` calls ``mmcv.ops.<type>``, ``nms`` when no type is given), and
    ``FocalLoss`` with ``use_sigmoid`` (mmdet calls mmcv's ``sigmoid_focal_loss`` on CUDA).

    Args:
        cfg: A model config (dicts and lists).
        prefix: The config key of ``cfg``, for naming where an op comes from.

    Returns:
        ``{op name: config key}`` in the order found, e.g.
        ``{'sigmoid_focal_loss': 'model.bbox_head.loss_cls', 'nms': 'model.test_cfg.nms'}``.
    """
    found: Dict[str, str] = {}

    def visit(node: Any, key: str, name: Optional[str]) -> None:
        if isinstance(node, dict):
            kind = node.get('type')
            op = _TYPE_OPS.get(kind) if isinstance(kind, str) else None
            if op is None and name == 'nms' and kind is None:
                op = 'nms'
            if kind == 'FocalLoss' and node.get('use_sigmoid', True):
                op = 'sigmoid_focal_loss'
            if op:
                found.setdefault(op, key)
            for child, value in node.items():
                visit(value, f'{key}.{child}', str(child))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f'{key}.{i}', name)

    visit(cfg, prefix, None)
    return found


def mmcv_has_cuda_ops() -> Optional[bool]:
    """Whether the installed mmcv's ops were compiled with CUDA (``mmcv.ops``'s own
    ``get_compiling_cuda_version()``, ``'not available'`` for a CPU build); None when its
    compiled ops do not load at all (another error, reported when the model is built)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        return get_compiling_cuda_version() != 'not available'
    except (ImportError, ModuleNotFoundError, OSError):
        return None


def runs_on_cuda() -> bool:
    """Whether the run will use a GPU: mmengine's runner takes CUDA whenever torch sees one
    (``CUDA_VISIBLE_DEVICES=''`` hides them: a CPU run)."""
    import torch
    return torch.cuda.is_available()


def check_mmcv_cuda_ops(cfg: Config) -> List[Problem]:
    """An error when the run will use CUDA, the config needs compiled mmcv ops and the
    installed mmcv has CPU ops only; naming the ops, where the config uses them, and the fix."""
    if not runs_on_cuda():
        return []
    ops: Dict[str, str] = {}
    for key in ('model', 'tta_model'):
        if isinstance(cfg.get(key), dict):
            for op, where in required_mmcv_ops(cfg.get(key), key).items():
                ops.setdefault(op, where)
    if not ops or mmcv_has_cuda_ops() is not False:
        return []
    import mmcv
    listing = ', '.join(f'{op} ({where})' for op, where in ops.items())
    return [Problem(
        ERROR, 'mmcv',
        f'this run uses CUDA, but the installed mmcv {mmcv.__version__} has CPU ops only '
        "(mmcv.ops.get_compiling_cuda_version() is 'not available') and the config needs "
        f'mmcv ops on the GPU: {listing}; the run would stop with a CUDA error where one is '
        'first used (a training or validation iteration). '
        + REBUILD_HINT)]
