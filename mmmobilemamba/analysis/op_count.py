"""Count the operators a model dispatches: a kernel budget that needs no GPU.

A :class:`OpCounter` (a ``TorchDispatchMode``) sees every operator that reaches PyTorch's
dispatcher below autograd and autocast, on any device. On CUDA nearly every such operator is
one kernel launch (or a few, never zero), so the count on CPU stands in for the number of CUDA
kernels a forward or a training step launches, the cost that dominates small inputs.

What is counted, and how:

* **kernels** (:attr:`OpCount.total`): every operator that does work on tensor data. A custom
  operator (``torch.library``, any namespace but ``aten``/``prims``) counts once: while the
  mode handles an operator it is off the mode stack, so whatever the operator's
  implementation calls, and whatever an ATen kernel calls internally (a ``contiguous`` copy
  inside ``bmm``), is not seen.
* **views** (:attr:`OpCount.views`): operators whose schema returns an alias of an input
  without writing it (``view``, ``permute``, ``transpose``, ``split``, ``expand``, ``detach``,
  ...), in-place metadata changes (``unsqueeze_``, ``as_strided_``: the ``inplace_view`` tag),
  ``_unsafe_view``, allocations (``empty``, ``empty_strided``, ``resize_``...) and the
  profiler's markers (``profiler::_record_function_enter_new``, from ``optimizer.step``).
* **casts** (:attr:`OpCount.casts`, a subset of the kernels): ``_to_copy`` to another dtype and
  ``copy_`` between dtypes (what ``.to(dtype)`` and autocast do).
* **host syncs** (:attr:`OpCount.syncs`): operators after which the host waits for the device
  (``_local_scalar_dense`` from ``.item()``/``bool(t)``, ``nonzero``, ``equal``...). Those that
  also compute (``nonzero``) are kernels too; ``_local_scalar_dense`` is a copy to the host and
  not a kernel.

Limits: operators above the dispatcher are decomposed before the mode sees them (``linear``
arrives as ``t`` + ``addmm``, ``reshape`` as ``view`` or ``_unsafe_view`` + ``clone``), which is
also what runs on a GPU. Kernels launched from Python without the dispatcher (a Triton kernel
not wrapped in ``torch.library``) are invisible; so are a CUDA-only code path's ops when
counting on CPU: count on the device whose code path you care about, or count on CPU a form
built for it.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['OpCount', 'OpCounter', 'count_ops', 'count_forward', 'count_train_step',
           'default_optimizer', 'sum_of_means']

# allocate or change metadata only: no kernel
_NO_KERNEL = frozenset({
    'aten::empty', 'aten::empty_strided', 'aten::empty_like', 'aten::new_empty',
    'aten::new_empty_strided', 'aten::resize_', 'aten::set_', 'aten::_unsafe_view',
    'aten::detach_', 'aten::_local_scalar_dense', 'aten::record_stream'})
# bookkeeping namespaces (the optimizer's record_function markers): no kernel
_NO_KERNEL_NAMESPACES = ('profiler::', )
# the host waits for the device's result
_SYNCS = frozenset({
    'aten::_local_scalar_dense', 'aten::item', 'aten::nonzero', 'aten::equal',
    'aten::masked_select', 'aten::_unique2', 'aten::unique_dim', 'aten::unique_consecutive'})


@dataclass
class OpCount:
    """What :class:`OpCounter` saw.

    Args:
        by_op (Counter): kernels (non-view, non-allocation operators) by name, e.g.
            ``'aten::convolution'``, ``'mmmobilemamba::ss2d_scan'``.
        view_ops (Counter): views, metadata changes and allocations by name (no kernel).
        cast_ops (Counter): casts by direction, e.g. ``'float32->bfloat16'``.
        sync_ops (Counter): host syncs by name.
    """

    by_op: Counter = field(default_factory=Counter)
    view_ops: Counter = field(default_factory=Counter)
    cast_ops: Counter = field(default_factory=Counter)
    sync_ops: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Operators that launch a kernel (casts and computing syncs included)."""
        return sum(self.by_op.values())

    @property
    def views(self) -> int:
        """Operators that launch no kernel (views, metadata changes, allocations)."""
        return sum(self.view_ops.values())

    @property
    def casts(self) -> int:
        """Dtype conversions (each also a kernel)."""
        return sum(self.cast_ops.values())

    @property
    def syncs(self) -> int:
        """Operators after which the host waits for the device."""
        return sum(self.sync_ops.values())

    def top(self, n: int = 10) -> List[Tuple[str, int]]:
        """The ``n`` most frequent kernels, ``(name, count)``, most frequent first."""
        return self.by_op.most_common(n)

    def __add__(self, other: 'OpCount') -> 'OpCount':
        return OpCount(self.by_op + other.by_op, self.view_ops + other.view_ops,
                       self.cast_ops + other.cast_ops, self.sync_ops + other.sync_ops)

    def summary(self, top: int = 0) -> str:
        """One line of totals, then the ``top`` most frequent kernels, one per line."""
        lines = [f'{self.total} kernels, {self.views} views/no-kernel ops, {self.casts} casts, '
                 f'{self.syncs} host syncs']
        lines += [f'  {count:6d}  {name}' for name, count in self.top(top)] if top else []
        return '\n'.join(lines)


def _is_view(func: torch._ops.OpOverload) -> bool:
    """True if ``func`` returns an alias of an input it does not write (a view), or only
    rewrites an input's metadata (``unsqueeze_``)."""
    if torch.Tag.inplace_view in func.tags:
        return True
    return any(ret.alias_info is not None and not ret.alias_info.is_write
               for ret in func._schema.returns)


def _cast(name: str, args: tuple, kwargs: dict) -> Optional[str]:
    """``'float32->bfloat16'`` if this call converts a tensor's dtype, else None."""
    if name == 'aten::_to_copy' and args and isinstance(args[0], torch.Tensor):
        src, dst = args[0].dtype, kwargs.get('dtype')
    elif name == 'aten::copy_' and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        src, dst = args[1].dtype, args[0].dtype
    else:
        return None
    if dst is None or dst == src:
        return None
    return f'{str(src).replace("torch.", "")}->{str(dst).replace("torch.", "")}'


class OpCounter(TorchDispatchMode):
    """A dispatch mode that counts every operator dispatched while it is active.

    Use as a context manager; the counts accumulate in :attr:`count` (an :class:`OpCount`).
    Nested calls (a custom op's implementation, the ops an ATen kernel calls) are not seen: the
    mode is off while it handles an operator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = OpCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name  # 'aten::add', 'mmmobilemamba::ss2d_scan'
        if name in _SYNCS:
            self.count.sync_ops[name] += 1
        if name in _NO_KERNEL or name.startswith(_NO_KERNEL_NAMESPACES) or _is_view(func):
            self.count.view_ops[name] += 1
        else:
            self.count.by_op[name] += 1
            cast = _cast(name, args, kwargs)
            if cast is not None:
                self.count.cast_ops[cast] += 1
        return func(*args, **kwargs)


def count_ops(fn: Callable[[], Any], warmup: int = 1) -> OpCount:
    """Count the operators one call of ``fn`` dispatches.

    Args:
        fn (callable): no arguments; what it returns is dropped.
        warmup (int): uncounted calls first, so that what a first call does once (caches,
            lazily created buffers such as an optimizer's momentum) is not counted. Default: 1.

    Returns:
        OpCount: the counts of the last call.
    """
    if warmup < 0:
        raise ValueError(f'warmup must be >= 0, got {warmup}')
    for _ in range(warmup):
        fn()
    counter = OpCounter()
    with counter:
        fn()
    return counter.count


def _as_args(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs, )


def _tensors(outputs: Any) -> Iterable[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        yield outputs
    elif isinstance(outputs, dict):
        for value in outputs.values():
            yield from _tensors(value)
    elif isinstance(outputs, (tuple, list)):
        for value in outputs:
            yield from _tensors(value)


def sum_of_means(outputs: Any) -> torch.Tensor:
    """The stand-in loss of :func:`count_train_step`: the sum of the means of every tensor in
    ``outputs`` (a tensor, or tuples/lists/dicts of them), in float32."""
    tensors = list(_tensors(outputs))
    if not tensors:
        raise ValueError('the model returned no tensor to build a loss from')
    loss = tensors[0].float().mean()
    for t in tensors[1:]:
        loss = loss + t.float().mean()
    return loss


def _device_type(model: nn.Module, args: Sequence[Any]) -> str:
    for t in args:
        if isinstance(t, torch.Tensor):
            return t.device.type
    param = next(model.parameters(), None)
    return param.device.type if param is not None else 'cpu'


def count_forward(model: nn.Module, inputs: Any, train: bool = False,
                  warmup: int = 1) -> OpCount:
    """Count the operators of one ``model(*inputs)``.

    Args:
        model (nn.Module): the model, in the form to count (deployed or not).
        inputs (Tensor | tuple): the positional argument(s) of the forward.
        train (bool): run in train mode with autograd on (what a training forward dispatches,
            without the backward); else eval mode under ``torch.no_grad``. Default: False.
        warmup (int): uncounted forwards first. Default: 1.

    Returns:
        OpCount: the counts of one forward.
    """
    args = _as_args(inputs)
    model.train(train)

    def forward():
        with torch.set_grad_enabled(train):
            model(*args)

    return count_ops(forward, warmup)


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """``SGD(lr=0.01, momentum=0.9, foreach=True)``: the multi-tensor update PyTorch picks by
    default for CUDA parameters, forced so that a count on CPU (where the default is one
    update per parameter) matches it."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                           momentum=0.9, foreach=True)


def count_train_step(model: nn.Module, inputs: Any,
                     optimizer: Optional[torch.optim.Optimizer] = None,
                     amp_dtype: Optional[torch.dtype] = None, warmup: int = 1) -> OpCount:
    """Count the operators of one training step: ``zero_grad``, forward in train mode (under
    ``torch.autocast`` when ``amp_dtype`` is given), loss = :func:`sum_of_means` of the
    outputs, backward, ``optimizer.step()``.

    Backward runs under the mode too (the autograd engine carries it to its threads), so its
    kernels are counted.

    Args:
        model (nn.Module): an undeployed model (it is put in train mode).
        inputs (Tensor | tuple): the positional argument(s) of the forward.
        optimizer (Optimizer, optional): default :func:`default_optimizer`.
        amp_dtype (torch.dtype, optional): ``torch.bfloat16`` or ``torch.float16``: autocast
            around the forward and the loss (as mmengine's ``AmpOptimWrapper``); no loss
            scaling. Default: None (float32).
        warmup (int): uncounted steps first (creates the optimizer's momentum buffers).
            Default: 1.

    Returns:
        OpCount: the counts of one step.
    """
    args = _as_args(inputs)
    optimizer = optimizer if optimizer is not None else default_optimizer(model)
    device_type = _device_type(model, args)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = sum_of_means(model(*args))
        loss.backward()
        optimizer.step()

    return count_ops(step, warmup)
