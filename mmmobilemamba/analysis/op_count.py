"""Count the kernels a model launches: a kernel budget that needs no GPU.

An :class:`OpCounter` (a ``TorchDispatchMode``) sees every operator that reaches PyTorch's
dispatcher below autograd and autocast, on any device, and every Triton kernel launched
while it is active. On CUDA nearly every ATen operator is one kernel launch (or a few, never
zero), so the count on CPU stands in for the number of CUDA kernels a forward or a training
step launches, the cost that dominates small inputs.

What is counted, and how:

* **launches** (:attr:`OpCount.total`): every ATen operator that does work on tensor data,
  and every Triton kernel launch (``triton::<kernel name>``, any kernel: Triton's JIT and
  interpreter launch paths are patched while counting). A custom operator defined in Python
  (``torch.library.custom_op``) is no launch itself: the counter runs its implementation
  with the mode on, so the fills, copies, casts and kernels inside it are counted, and
  records which implementation ran (:attr:`OpCount.custom_ops`: ``'triton'`` when it
  launched a Triton kernel, else ``'torch'``, its PyTorch twin). Operators of other
  namespaces (compiled kernels: ``mkldnn::``, ``torchvision::``, mmcv's) count one launch
  each, as ATen's. What a compiled kernel calls internally (a ``contiguous`` copy inside
  ``bmm``) is not seen, nor what Triton's interpreter does on the host around a kernel.
* **views** (:attr:`OpCount.views`): operators whose schema returns an alias of an input
  without writing it (``view``, ``permute``, ``transpose``, ``split``, ``expand``, ``detach``,
  ...), in-place metadata changes (``unsqueeze_``, ``as_strided_``: the ``inplace_view`` tag),
  ``_unsafe_view``, allocations (``empty``, ``empty_strided``, ``resize_``...) and the
  profiler's markers (``profiler::_record_function_enter_new``, from ``optimizer.step``).
* **casts** (:attr:`OpCount.casts`, a subset of the launches): ``_to_copy`` to another dtype
  and ``copy_`` between dtypes (what ``.to(dtype)`` and autocast do), inside custom ops too.
* **host syncs** (:attr:`OpCount.syncs`): operators after which the host waits for the device
  (``_local_scalar_dense`` from ``.item()``/``bool(t)``, ``nonzero``, ``equal``...). Those that
  also compute (``nonzero``) are launches too; ``_local_scalar_dense`` is a copy to the host
  and not a kernel.

To count a CUDA code path on a CPU, build the form for it and select the Triton kernels
(``scan_backend='triton'``): inside :func:`triton_interpreter` Triton runs them on CPU
tensors, and their launches count as on the GPU.

Limits: operators above the dispatcher are decomposed before the mode sees them (``linear``
arrives as ``t`` + ``addmm``, ``reshape`` as ``view`` or ``_unsafe_view`` + ``clone``), which is
also what runs on a GPU. A kernel launched from Python by neither the dispatcher nor Triton
(a CUDA extension called directly) is invisible; so are a CUDA-only code path's ops when
counting on CPU: count on the device whose code path you care about, or count on CPU a form
built for it.
"""
import contextlib
import importlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['OpCount', 'OpCounter', 'count_ops', 'count_forward', 'count_train_step',
           'default_optimizer', 'sum_of_means', 'triton_interpreter', 'TRITON']

# allocate or change metadata only: no kernel
_NO_KERNEL = frozenset({
    'aten::empty', 'aten::empty_strided', 'aten::empty_like', 'aten::new_empty',
    'aten::new_empty_strided', 'aten::resize_', 'aten::set_', 'aten::_unsafe_view',
    'aten::detach_', 'aten::_local_scalar_dense', 'aten::record_stream'})
# bookkeeping namespaces (the optimizer's record_function markers): no kernel
_NO_KERNEL_NAMESPACES = ('profiler::', )
# operator namespaces whose operators are kernels themselves; any other is a custom op
_ATEN_NAMESPACES = ('aten::', 'prims::')
# the host waits for the device's result
_SYNCS = frozenset({
    'aten::_local_scalar_dense', 'aten::item', 'aten::nonzero', 'aten::equal',
    'aten::masked_select', 'aten::_unique2', 'aten::unique_dim', 'aten::unique_consecutive'})
TRITON = 'triton::'  # the name prefix of a counted Triton kernel launch


@dataclass
class OpCount:
    """What :class:`OpCounter` saw.

    Args:
        by_op (Counter): launches by name: ATen operators (``'aten::convolution'``) and
            Triton kernels (``'triton::_ss2d_forward_kernel'``).
        view_ops (Counter): views, metadata changes and allocations by name (no kernel).
        cast_ops (Counter): casts by direction, e.g. ``'float32->bfloat16'``.
        sync_ops (Counter): host syncs by name.
        custom_ops (Counter): custom-op calls by name and the implementation that ran,
            ``('mmmobilemamba::ss2d_scan', 'triton')`` (a Triton kernel launched) or
            ``(..., 'torch')`` (its PyTorch twin). No launches themselves: what they run is
            in the other counters.
    """

    by_op: Counter = field(default_factory=Counter)
    view_ops: Counter = field(default_factory=Counter)
    cast_ops: Counter = field(default_factory=Counter)
    sync_ops: Counter = field(default_factory=Counter)
    custom_ops: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Kernel launches: ATen operators that launch one (casts and computing syncs
        included), inside custom ops too, and Triton kernels."""
        return sum(self.by_op.values())

    @property
    def triton_launches(self) -> int:
        """Triton kernel launches (part of :attr:`total`)."""
        return sum(n for name, n in self.by_op.items() if name.startswith(TRITON))

    @property
    def views(self) -> int:
        """Operators that launch no kernel (views, metadata changes, allocations)."""
        return sum(self.view_ops.values())

    @property
    def casts(self) -> int:
        """Dtype conversions (each also a launch)."""
        return sum(self.cast_ops.values())

    @property
    def syncs(self) -> int:
        """Operators after which the host waits for the device."""
        return sum(self.sync_ops.values())

    def implementations(self, op: str) -> Counter:
        """How often custom op ``op`` ran each implementation, e.g. ``{'triton': 7}``."""
        return Counter({impl: n for (name, impl), n in self.custom_ops.items() if name == op})

    def top(self, n: int = 10) -> List[Tuple[str, int]]:
        """The ``n`` most frequent launches, ``(name, count)``, most frequent first."""
        return self.by_op.most_common(n)

    def __add__(self, other: 'OpCount') -> 'OpCount':
        return OpCount(self.by_op + other.by_op, self.view_ops + other.view_ops,
                       self.cast_ops + other.cast_ops, self.sync_ops + other.sync_ops,
                       self.custom_ops + other.custom_ops)

    def summary(self, top: int = 0) -> str:
        """One line of totals, the custom ops' implementations, then the ``top`` most
        frequent launches, one per line."""
        lines = [f'{self.total} launches ({self.triton_launches} Triton kernels), {self.views} '
                 f'views/no-kernel ops, {self.casts} casts, {self.syncs} host syncs']
        if self.custom_ops:
            lines.append('  custom ops: ' + ', '.join(
                f'{name} {impl} x{n}' for (name, impl), n in sorted(self.custom_ops.items())))
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


def _device_key(args: tuple, kwargs: dict) -> torch._C.DispatchKeySet:
    """The backend dispatch key of a custom op's call: its first tensor's device."""
    for value in list(args) + list(kwargs.values()):
        tensors = value if isinstance(value, (list, tuple)) else (value, )
        for t in tensors:
            if isinstance(t, torch.Tensor):
                key = torch._C._dispatch_key_for_device(t.device.type)
                return torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    return torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _is_python_op(name: str) -> bool:
    """Whether operator ``name`` is a ``torch.library.custom_op`` (Python implementation)."""
    from torch._library.custom_ops import OPDEFS
    return name in OPDEFS


def _triton_launchers() -> List[type]:
    """Triton's kernel classes whose ``run`` launches a kernel: the JIT's and the
    interpreter's (none without Triton)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except Exception:  # no Triton, or one that does not import with this torch
        return []
    return [JITFunction, InterpretedFunction]


class OpCounter(TorchDispatchMode):
    """A dispatch mode that counts the kernels launched while it is active.

    Use as a context manager; the counts accumulate in :attr:`count` (an :class:`OpCount`).
    A custom op's implementation runs with the mode on (its ATen operators and Triton
    kernels are counted); what an ATen kernel calls internally is not seen (the mode is off
    while it handles an operator).

    Args:
        run_triton (bool): run the Triton kernels (default), or only count their launches
            and leave their outputs as allocated: the same count in a fraction of the time
            under Triton's interpreter, for models whose operators do not depend on values
            (no host sync: :attr:`OpCount.syncs` says). Default: True.
    """

    def __init__(self, run_triton: bool = True) -> None:
        super().__init__()
        self.count = OpCount()
        self.run_triton = run_triton
        self._in_triton = 0  # > 0 while a Triton kernel runs (its host work is no launch)
        self._depth = 0  # entries of the mode (the outermost patches Triton's launchers)
        self._patched: List[Tuple[type, Callable]] = []

    # -- Triton launches
    def _launch(self, run: Callable) -> Callable:
        counter = self

        def counted_run(kernel, *args, grid, warmup, **kwargs):
            if warmup:
                return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            counter.count.by_op[TRITON + getattr(kernel.fn, '__name__', repr(kernel))] += 1
            if not counter.run_triton:
                return None
            counter._in_triton += 1
            try:
                return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter._in_triton -= 1

        counted_run.counted = True
        return counted_run

    def __enter__(self):
        if self._depth == 0:  # the outermost entry (a custom op's implementation re-enters)
            for cls in _triton_launchers():
                run = cls.__dict__['run']
                if not getattr(run, 'counted', False):  # not counted by another counter
                    self._patched.append((cls, run))
                    cls.run = self._launch(run)
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._depth -= 1
            if self._depth == 0:
                for cls, run in self._patched:
                    cls.run = run
                self._patched = []

    # -- operators
    def _run_custom_op(self, func, name: str, args: tuple, kwargs: dict):
        launches = self.count.triton_launches
        with self:  # the implementation's operators reach this mode
            out = func.redispatch(_device_key(args, kwargs), *args, **kwargs)
        impl = 'triton' if self.count.triton_launches > launches else 'torch'
        self.count.custom_ops[(name, impl)] += 1
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._in_triton:  # Triton's interpreter copying arguments on the host
            return func(*args, **kwargs)
        name = func._schema.name  # 'aten::add', 'mmmobilemamba::ss2d_scan'
        if not name.startswith(_ATEN_NAMESPACES + _NO_KERNEL_NAMESPACES) and _is_python_op(name):
            return self._run_custom_op(func, name, args, kwargs)
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


def count_ops(fn: Callable[[], Any], warmup: int = 1, run_triton: bool = True) -> OpCount:
    """Count the kernels one call of ``fn`` launches.

    Args:
        fn (callable): no arguments; what it returns is dropped.
        warmup (int): uncounted calls first, so that what a first call does once (caches,
            lazily created buffers such as an optimizer's momentum, Triton's compilation) is
            not counted. Default: 1.
        run_triton (bool): False counts Triton launches without running the kernels, in the
            warm-up calls too (see :class:`OpCounter`). Default: True.

    Returns:
        OpCount: the counts of the last call.
    """
    if warmup < 0:
        raise ValueError(f'warmup must be >= 0, got {warmup}')
    for _ in range(warmup):
        if run_triton:
            fn()
        else:  # a counter that skips the kernels, its counts dropped
            with OpCounter(run_triton=False):
                fn()
    counter = OpCounter(run_triton)
    with counter:
        fn()
    return counter.count


_KERNEL_PACKAGE = 'mmmobilemamba.ops'
_KERNEL_HELPERS = 'mmmobilemamba.ops.triton_common'


def _kernel_modules() -> List[str]:
    """The Triton kernel modules of :mod:`mmmobilemamba.ops` (``triton_*.py``), helpers
    first: the others import their jit functions."""
    import mmmobilemamba.ops as ops
    folder = os.path.dirname(ops.__file__)
    names = sorted(f'{_KERNEL_PACKAGE}.{f[:-3]}' for f in os.listdir(folder)
                   if f.startswith('triton_') and f.endswith('.py'))
    return sorted(names, key=lambda n: n != _KERNEL_HELPERS)


@contextlib.contextmanager
def triton_interpreter() -> Iterator[None]:
    """Within, the Triton kernels of :mod:`mmmobilemamba.ops` run in Triton's interpreter,
    on CPU tensors (slow: for tests and launch counts; nothing else sets it).

    Sets ``TRITON_INTERPRET=1`` and re-imports the kernel modules so that their kernels are
    built for the interpreter; afterwards both are restored.

    Raises:
        ImportError: without a working Triton.
    """
    import triton  # noqa: F401  a clear ImportError without it
    before = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    modules = []
    try:
        modules = [importlib.reload(importlib.import_module(name))
                   for name in _kernel_modules()]
        yield
    finally:
        if before is None:
            os.environ.pop('TRITON_INTERPRET', None)
        else:
            os.environ['TRITON_INTERPRET'] = before
        for module in modules:
            if module.__name__ in sys.modules:
                importlib.reload(module)


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
                  warmup: int = 1, run_triton: bool = True) -> OpCount:
    """Count the operators of one ``model(*inputs)``.

    Args:
        model (nn.Module): the model, in the form to count (deployed or not).
        inputs (Tensor | tuple): the positional argument(s) of the forward.
        train (bool): run in train mode with autograd on (what a training forward dispatches,
            without the backward); else eval mode under ``torch.no_grad``. Default: False.
        warmup (int): uncounted forwards first. Default: 1.
        run_triton (bool): False counts Triton launches without running the kernels (see
            :class:`OpCounter`). Default: True.

    Returns:
        OpCount: the counts of one forward.
    """
    args = _as_args(inputs)
    model.train(train)

    def forward():
        with torch.set_grad_enabled(train):
            model(*args)

    return count_ops(forward, warmup, run_triton)


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """``SGD(lr=0.01, momentum=0.9, foreach=True)``: the multi-tensor update PyTorch picks by
    default for CUDA parameters, forced so that a count on CPU (where the default is one
    update per parameter) matches it."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                           momentum=0.9, foreach=True)


def count_train_step(model: nn.Module, inputs: Any,
                     optimizer: Optional[torch.optim.Optimizer] = None,
                     amp_dtype: Optional[torch.dtype] = None, warmup: int = 1,
                     run_triton: bool = True) -> OpCount:
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
        run_triton (bool): False counts Triton launches without running the kernels (see
            :class:`OpCounter`). Default: True.

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

    return count_ops(step, warmup, run_triton)
