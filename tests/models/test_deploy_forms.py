"""A deploy form per device: ``switch_to_deploy(device=...)`` builds the CPU form or the CUDA
form on any machine; both compute what the unfused model computes (fp32, 1e-5), the CUDA form
without grouped convolutions of several input channels per group and without BatchNorm."""
import pytest
import torch
import torch.nn as nn

from mmmobilemamba.models import MobileMamba
from mmmobilemamba.models.layers import InferenceConv2d


def _b1(seed=0):
    torch.manual_seed(seed)
    model = MobileMamba(arch='b1')
    with torch.no_grad():  # statistics and zero-init branches that matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope='module')
def forms():
    reference = _b1()
    cpu, cuda = _b1(), _b1()
    cpu.switch_to_deploy(device='cpu')
    cuda.switch_to_deploy(device='cuda')
    return reference, cpu, cuda


@pytest.mark.parametrize('size', [(128, 128), (100, 164)])  # odd maps at the coarse stages
def test_both_forms_compute_the_unfused_model(forms, size):
    reference, cpu, cuda = forms
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference(x)
        for name, model in (('cpu', cpu), ('cuda', cuda)):
            for out, ref in zip(model(x), expected):
                torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5,
                                           msg=lambda m, name=name: f'{name} form: {m}')


def test_cuda_form_has_only_dense_or_depthwise_convs_and_no_norms(forms):
    _, cpu, cuda = forms
    convs = [m for m in cuda.modules() if isinstance(m, nn.Conv2d)]
    grouped = [m for m in convs if m.groups > 1 and m.in_channels != m.groups]
    assert not grouped, grouped
    assert not any(isinstance(m, nn.BatchNorm2d) for m in cuda.modules())
    # the CPU form keeps its polyphase grouped conv (fast in oneDNN), the CUDA form does not
    assert any(m.groups > 1 and m.in_channels != m.groups for m in cpu.modules()
               if isinstance(m, nn.Conv2d))
    assert cuda.deployed == 'cuda' and cpu.deployed == 'cpu'


def test_cuda_form_computes_nchw_on_any_device(forms, monkeypatch):
    """No layout round trips: NCHW throughout (no channels-last oneDNN convs on CPU either)."""
    _, _, cuda = forms
    layouts = []
    original = InferenceConv2d._prepared_weight

    def recording(self, layout):
        layouts.append(layout[0])
        return original(self, layout)

    monkeypatch.setattr(InferenceConv2d, '_prepared_weight', recording)
    with torch.no_grad():
        cuda(torch.randn(1, 3, 128, 128))
    assert 'onednn' not in layouts


def test_default_form_follows_the_parameters_device():
    model = MobileMamba(arch=dict(embed_dims=(48, 64, 96), depths=(1, 1, 1),
                                  global_ratios=(0.8, 0.7, 0.6), local_ratios=(0.2, 0.2, 0.3),
                                  kernel_sizes=(7, 5, 3)))
    assert model.switch_to_deploy().deployed == 'cpu'
    assert model.switch_to_deploy().deployed == 'cpu'  # idempotent
    with pytest.raises(RuntimeError, match="already deployed for 'cpu'"):
        model.switch_to_deploy(device='cuda')
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        MobileMamba(arch='t2').switch_to_deploy(device='meta')
