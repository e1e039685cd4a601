"""mmengine's ``compile`` option, applied where it pays: the backbone and the neck.

mmengine's Runner answers ``compile=True`` by compiling the whole ``train_step``: the data
preprocessor, the heads' target assignment and losses (whose shapes depend on the data: the
number of positive anchors, of proposals) and the optimizer step (whose learning rate changes
every warm-up iteration). Dynamo recompiles those every step until it gives up, minutes per
recompilation with inductor. ``tools/train.py`` and ``tools/test.py`` instead compile the
modules that form one graph, MobileMamba and its neck (``torch.compile(fullgraph=True)``
holds for them), in place with ``nn.Module.compile`` (the state dict keeps its keys), and
leave the rest eager. Sizes are dynamic unless the config says otherwise (``dynamic``): batches
padded to the size of their largest image change shape from step to step, and one dynamic
graph serves them all instead of a compilation for the first size and another for the rest.
"""
from typing import List, Optional

import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['take_compile_option', 'compile_model_parts', 'COMPILED_PARTS']

COMPILED_PARTS = ('backbone', 'neck')


def take_compile_option(cfg: Config) -> Optional[dict]:
    """Remove ``compile`` from ``cfg`` (so that the Runner does not compile ``train_step``) and
    return the ``torch.compile`` arguments it asked for: None when off, ``{}`` for True.

    Raises:
        ValueError: ``compile`` is neither a bool nor a dict.
    """
    value = cfg.pop('compile', None)
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise ValueError(f'compile must be True, False or a dict of torch.compile arguments '
                     f"(e.g. compile=dict(mode='max-autotune')), got {value!r}")


def compile_model_parts(model: nn.Module, compile_kwargs: dict) -> List[str]:
    """Compile ``model``'s backbone and neck in place (``nn.Module.compile``).

    Args:
        model (nn.Module): the detector or segmentor, or a (distributed) wrapper of it.
        compile_kwargs (dict): arguments of ``torch.compile`` (``dynamic`` defaults to True).

    Returns:
        list[str]: the names of the compiled parts.
    """
    model = getattr(model, 'module', model)  # DDP and mmengine's wrappers
    compile_kwargs = {'dynamic': True, **compile_kwargs}
    parts = [name for name in COMPILED_PARTS if isinstance(getattr(model, name, None), nn.Module)]
    for name in parts:
        getattr(model, name).compile(**compile_kwargs)
    print_log(f'compile: {", ".join(parts)} compiled in place (torch.compile({compile_kwargs})); '
              'heads, losses and the optimizer step stay eager', logger='current')
    return parts
