"""``compile`` in a config: the backbone and the neck are compiled in place (state dict keys
unchanged), mmengine's whole-``train_step`` compilation is not asked for."""
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmmobilemamba.engine.compile import compile_model_parts, take_compile_option


@pytest.mark.parametrize('value,expected', [(None, None), (False, None), (True, {}),
                                            (dict(mode='max-autotune'),
                                             dict(mode='max-autotune'))])
def test_take_compile_option(value, expected):
    cfg = Config(dict(model=dict()) if value is None else dict(model=dict(), compile=value))
    assert take_compile_option(cfg) == expected
    assert 'compile' not in cfg


def test_bad_compile_value_is_a_clear_error():
    with pytest.raises(ValueError, match='compile must be True, False or a dict'):
        take_compile_option(Config(dict(compile='yes')))


class Detector(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone, self.neck, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)


def test_backbone_and_neck_compile_in_place_inside_a_wrapper():
    model = Detector()
    keys = list(model.state_dict())
    wrapper = nn.Module()
    wrapper.module = model  # as DDP / mmengine's wrappers hold it
    assert compile_model_parts(wrapper, dict(backend='eager')) == ['backbone', 'neck']
    assert model.backbone._compiled_call_impl is not None
    assert model.neck._compiled_call_impl is not None
    assert model.head._compiled_call_impl is None
    assert list(model.state_dict()) == keys
    torch._dynamo.reset()
    out = model.neck(model.backbone(torch.randn(1, 3, 4, 4)))
    assert out.shape == (1, 4, 4, 4)
