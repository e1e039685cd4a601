"""The authors' released detectors and segmentors load into the models of our paper configs.

``tests/data/official_downstream_models.json`` lists every key and shape of their 7 released
files; a file with those keys and shapes (random values, mmengine's checkpoint format) must
load strictly into the model built from our matching config, every tensor where the mapping
of the authors' layout puts it. Their detection neck (``EfficientViTFPN``) is reproduced from
its fixtures after the mapping.
"""
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

from mmmobilemamba.engine.config import detect_codebase, get_registry  # noqa: E402
from mmmobilemamba.models import MobileMambaFPN, convert_official_model  # noqa: E402
from mmmobilemamba.models.checkpoint import compare_with_model, convert_neck_keys  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / 'tests' / 'data'
OFFICIAL = json.loads((DATA / 'official_downstream_models.json').read_text())
# the authors' model name -> our matching config
PAPER_CONFIGS = {name: entry['_ours'] for name, entry in
                 json.loads((DATA / 'official_settings.json').read_text()).items()
                 if not name.startswith('_')}


def paper_config(model: str) -> Config:
    return Config.fromfile(str(REPO / PAPER_CONFIGS[model]))


@functools.lru_cache(maxsize=None)
def built(model: str) -> torch.nn.Module:
    """Our model of a paper config (weights at init; no ImageNet file read)."""
    cfg = paper_config(model)
    return get_registry(detect_codebase(cfg), 'MODELS').build(cfg.model)


def released_like(model: str, seed: int = 0) -> dict:
    """A state dict with the keys and shapes of the authors' released file, random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in OFFICIAL[model]['state_dict'].items():
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(shape, generator=generator) if shape else torch.randn(())
    return state


@pytest.mark.parametrize('model', list(PAPER_CONFIGS))
def test_released_file_loads_strictly_into_our_paper_model(tmp_path, model):
    net = built(model)
    state = released_like(model)
    path = tmp_path / f'{model}.pth'
    torch.save({'meta': {'dataset_meta': {'classes': ('a',)}}, 'state_dict': state}, path)

    report = compare_with_model(net, str(path))
    assert report.exact, (report.missing[:5], report.unexpected[:5], report.mismatched[:5])
    load_checkpoint(net, str(path), map_location='cpu', strict=True)  # raises on any mismatch

    own = net.state_dict()
    converted = convert_official_model(state)
    if model.startswith('ssdlite'):  # the backbone's stage 2 is not built for SSDLite
        dropped = [k for k in converted if k.startswith('backbone.stages.2.')]
        assert dropped and all(k not in own for k in dropped)
        converted = {k: v for k, v in converted.items() if k not in dropped}
    assert set(converted) == {k for k in own}
    for key, value in converted.items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize('model', list(PAPER_CONFIGS))
def test_parameter_counts_equal_the_release(model):
    """Same parameters as the authors' model, less their filters and SSDLite's unused stage."""
    official = OFFICIAL[model]
    ours = sum(p.numel() for p in built(model).parameters())
    filters = official['num_params'] - official['num_trainable_params']  # fixed wavelet filters
    unused = sum(torch.Size(shape).numel() for key, shape in official['state_dict'].items()
                 if model.startswith('ssdlite') and key.startswith('backbone.blocks3.')
                 and not key.endswith(('running_mean', 'running_var', 'num_batches_tracked',
                                       'wt_filter', 'iwt_filter')))
    assert ours == official['num_params'] - filters - unused


def test_convert_official_model_maps_backbone_neck_and_keeps_heads():
    state = released_like('retinanet_b1')
    converted = convert_official_model({'state_dict': state, 'meta': {}})
    assert 'backbone.stages.0.blocks.0.mixer.global_branch.ss2d.out_norm.weight' in converted
    assert not any('wt_filter' in k for k in converted)
    assert torch.equal(converted['neck.deconv_levels.0.upsample.conv.weight'],
                       state['neck.extra_trans_convs.0.conv.weight'])
    assert torch.equal(converted['neck.deconv_levels.0.fpn_conv.conv.bias'],
                       state['neck.extra_fpn_convs.0.conv.bias'])
    assert torch.equal(converted['neck.extra_convs.0.conv.weight'],
                       state['neck.fpn_convs.3.conv.weight'])
    assert torch.equal(converted['bbox_head.retina_cls.weight'], state['bbox_head.retina_cls.weight'])
    # keys already in our layout pass through unchanged
    assert convert_official_model(converted) == converted


def test_convert_official_model_rejects_a_backbone_only_file():
    with pytest.raises(ValueError, match='convert_official_checkpoint'):
        convert_official_model({'blocks1.0.dw0.m.c.weight': torch.zeros(1)})


# ------------------------------------------------------------------- the authors' neck
def _official_neck_as_ours(neck_cfg: dict) -> MobileMambaFPN:
    return MobileMambaFPN(
        neck_cfg['in_channels'], neck_cfg['out_channels'], num_outs=neck_cfg['num_outs'],
        start_level=neck_cfg.get('start_level', 0),
        num_deconv_levels=neck_cfg['num_extra_trans_convs'],
        add_extra_convs=neck_cfg.get('add_extra_convs', False)).eval()


@pytest.mark.parametrize('fixture', ['official_fpn_maskrcnn.pt', 'official_fpn_retinanet.pt'])
def test_authors_neck_outputs_are_reproduced(fixture):
    fx = torch.load(DATA / fixture, weights_only=True)
    neck = _official_neck_as_ours(fx['neck_cfg'])
    neck.load_state_dict(fx['state_dict'], strict=True)  # their keys, mapped while loading
    with torch.no_grad():
        outs = neck(tuple(fx['inputs']))
    assert len(outs) == len(fx['outputs'])
    for ours, theirs in zip(outs, fx['outputs']):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-5


def test_neck_mapping_follows_the_computation_not_the_index():
    """Their extra_fpn_convs.0 runs on the output of extra_trans_convs.1 (stride 4)."""
    fx = torch.load(DATA / 'official_fpn_maskrcnn.pt', weights_only=True)
    mapped = convert_neck_keys({'neck.' + k: v for k, v in fx['state_dict'].items()})
    assert torch.equal(mapped['neck.deconv_levels.1.fpn_conv.conv.weight'],
                       fx['state_dict']['extra_fpn_convs.0.conv.weight'])
    assert torch.equal(mapped['neck.deconv_levels.0.fpn_conv.conv.weight'],
                       fx['state_dict']['extra_fpn_convs.1.conv.weight'])


# ------------------------------------------------------------------------ converter tool
def test_converter_tool_converts_a_whole_released_model(tmp_path):
    state = released_like('mask_rcnn_b1')
    src, dst = tmp_path / 'maskrcnn.pth', tmp_path / 'converted.pth'
    meta = {'dataset_meta': {'classes': ('person', 'bicycle')}}
    torch.save({'meta': meta, 'state_dict': state}, src)
    proc = subprocess.run([sys.executable, str(REPO / 'tools/model_converters/mobilemamba_official.py'),
                           str(src), str(dst)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(dst, weights_only=True)
    assert out['meta']['dataset_meta'] == meta['dataset_meta']
    assert out['meta']['source'] == 'whole model'
    assert out['state_dict'].keys() == convert_official_model(state).keys()
    assert compare_with_model(built('mask_rcnn_b1'), out).exact

    backbone = tmp_path / 'backbone.pth'
    proc = subprocess.run([sys.executable, str(REPO / 'tools/model_converters/mobilemamba_official.py'),
                           str(src), str(backbone), '--backbone-only'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(k.startswith(('patch_embed.', 'stages.'))
               for k in torch.load(backbone, weights_only=True)['state_dict'])


def test_released_detector_fine_tunes_with_another_num_classes(tmp_path):
    """load_from: the class-dependent layers start fresh, the rest comes from the file."""
    from mmengine.registry import DefaultScope

    from mmmobilemamba.engine.launch import report_load_from
    cfg = paper_config('retinanet_b1')
    cfg.model.bbox_head.num_classes = 3
    with DefaultScope.overwrite_default_scope('mmdet'):
        net = get_registry('mmdet', 'MODELS').build(cfg.model)
    init_cls = net.bbox_head.retina_cls.weight.detach().clone()
    state = released_like('retinanet_b1')
    path = tmp_path / 'retinanet.pth'
    torch.save({'state_dict': state}, path)

    class Runner:
        model = net
    report_load_from(Runner, Config(dict(load_from=str(path))), training=True)  # no error
    load_checkpoint(net, str(path), map_location='cpu', strict=False)
    assert torch.equal(net.bbox_head.retina_cls.weight, init_cls)
    assert torch.equal(net.neck.deconv_levels[0].upsample.conv.weight,
                       state['neck.extra_trans_convs.0.conv.weight'])
    assert torch.equal(net.bbox_head.reg_convs[0].conv.weight,
                       state['bbox_head.reg_convs.0.conv.weight'])
