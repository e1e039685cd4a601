"""The paper configs against the authors' settings (``tests/data/official_settings.json``).

Every entry of the table (test time and training) must resolve to the same value in our
matching config, except the deviations listed in :data:`DEVIATIONS`, each explained in the
config itself. The authors' backbone and neck dicts are translated to ours (their
``MobileMamba`` / ``EfficientViTFPN`` arguments to ``MobileMamba`` / ``MobileMambaFPN``), and
the optimiser's param-wise settings are compared by effect: the learning rate and weight
decay every parameter gets, with mmengine's own optimiser constructor on both sides.
"""
import copy
import functools
import inspect
import json
import math
import os.path as osp
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402

from mmmobilemamba.models import ARCH_SETTINGS, MobileMambaFPN, convert_official_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / 'tests' / 'data'
OFFICIAL = json.loads((DATA / 'official_settings.json').read_text())
OFFICIAL_MODELS = json.loads((DATA / 'official_downstream_models.json').read_text())

# the authors' model name -> our matching config
PAPER_CONFIGS = {name: entry['_ours'] for name, entry in OFFICIAL.items() if not name.startswith('_')}
# Where our configs differ on purpose: (model, dotted key) -> our value. The configs say why.
DEVIATIONS = {
    # mmdet 3.3's SSDHead cannot predict (AttributeError on loss_cls); the authors patched
    # their copy of mmdet, we subclass it (same arguments, keys and outputs)
    ('ssdlite_b1_320', 'model.bbox_head.type'): 'SSDLiteHead',
    ('ssdlite_b1_512', 'model.bbox_head.type'): 'SSDLiteHead',
    # mmdet's RetinaNet base names the sampler RetinaHead builds anyway when none is given
    # (the authors' train_cfg has none): the same sampler
    ('retinanet_b1', 'model.train_cfg.sampler'): {'type': 'PseudoSampler'},
    # the authors' segmentation configs set no auto_scale_lr (mmseg's bases have none); ours
    # name their total batch so that --auto-scale-lr works (off unless asked for)
    **{(name, 'auto_scale_lr'): {'enable': False, 'base_batch_size': 32}
       for name in ('sem_fpn_b4', 'deeplabv3_b4', 'pspnet_b4')},
}
NOT_SET = '<not set>'
# compared by effect in test_param_groups_equal_the_authors
BY_EFFECT = {'optim_wrapper.paramwise_cfg'}


@functools.lru_cache(maxsize=None)
def our_config(model: str) -> Config:
    return Config.fromfile(str(REPO / PAPER_CONFIGS[model]))


def plain(value):
    """ConfigDicts as dicts, tuples as lists (the JSON table's form); no ``_scope_`` (mmengine
    adds it to what comes from ``mmdet::``/``mmseg::`` bases: where a type is looked up)."""
    if isinstance(value, (dict, ConfigDict)):
        return {k: plain(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def differences(ours, theirs, path=''):
    """Every place where two plain values differ (floats compared to 1e-9 relative)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for key in sorted(set(ours) | set(theirs)):
            sub = f'{path}.{key}' if path else key
            if sub in BY_EFFECT:
                continue
            if key not in ours or key not in theirs:
                out.append(f'{sub}: ours {ours.get(key, NOT_SET)!r}, '
                           f'authors {theirs.get(key, NOT_SET)!r}')
            else:
                out += differences(ours[key], theirs[key], sub)
        return out
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs))
                for d in differences(a, b, f'{path}[{i}]')]
    if isinstance(ours, float) or isinstance(theirs, float):
        if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and \
                math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-15):
            return []
    elif ours == theirs and type(ours) is type(theirs):
        return []
    return [f'{path}: ours {ours!r}, authors {theirs!r}']


def lookup(cfg: Config, dotted: str):
    node = cfg.to_dict()
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            return NOT_SET
        node = node[part]
    return plain(node)


def official_backbone(backbone: dict) -> dict:
    """The authors' MobileMamba arguments in our terms."""
    assert backbone['forward_type'] == 'v052d' and backbone['stages'] == ['s', 's', 's']
    return dict(
        embed_dims=backbone['embed_dim'], depths=backbone['depth'],
        global_ratios=backbone['global_ratio'], local_ratios=backbone['local_ratio'],
        kernel_sizes=backbone['kernels'], ssm_ratio=backbone['ssm_ratio'],
        drop_path_rate=backbone['drop_path'],
        # their forward returns [patch_embed, blocks1, blocks2, blocks3][i]
        out_indices=[i - 1 for i in backbone['out_indices']],
        frozen_stages=backbone['frozen_stages'], norm_eval=backbone['norm_eval'],
        norm='SyncBN' if backbone['sync_bn'] else 'BN',
        imagenet_weights=osp.basename(backbone['pretrained']))


def our_backbone(backbone: dict) -> dict:
    settings = dict(ARCH_SETTINGS[backbone['arch']])
    if backbone.get('drop_path_rate') is not None:
        settings['drop_path_rate'] = backbone['drop_path_rate']
    return dict(
        **{k: plain(v) for k, v in settings.items()},
        out_indices=plain(backbone.get('out_indices', (0, 1, 2))),
        frozen_stages=backbone.get('frozen_stages', -1),
        norm_eval=backbone.get('norm_eval', False),
        norm=(backbone.get('norm_cfg') or dict(type='BN'))['type'],
        imagenet_weights=osp.basename(backbone['init_cfg']['checkpoint']))


_FPN_DEFAULTS = {name: p.default for name, p in
                 inspect.signature(MobileMambaFPN.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty}


def official_neck(neck: dict) -> dict:
    """The authors' EfficientViTFPN as MobileMambaFPN arguments (what it computes, its init)."""
    assert neck['type'] == 'EfficientViTFPN'
    # no norm, no activation; Xavier on Conv2d only (transposed convs: ConvModule's Kaiming)
    return dict(plain(_FPN_DEFAULTS), type='MobileMambaFPN', in_channels=neck['in_channels'],
                out_channels=neck['out_channels'], num_outs=neck['num_outs'],
                start_level=neck.get('start_level', 0),
                num_deconv_levels=neck['num_extra_trans_convs'],
                add_extra_convs=neck.get('add_extra_convs', False),
                init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform'))


def expected_and_ours(model: str, key: str):
    theirs, ours = OFFICIAL[model][key], lookup(our_config(model), key)
    if key == 'model.backbone':
        return our_backbone(ours), official_backbone(theirs)
    if key == 'model.neck' and theirs['type'] == 'EfficientViTFPN':
        return dict(plain(_FPN_DEFAULTS), **ours), official_neck(theirs)
    for (name, dotted), value in DEVIATIONS.items():
        if name == model and dotted == key:  # a whole entry
            theirs = value
        elif name == model and dotted.startswith(key + '.'):
            theirs = copy.deepcopy(theirs)
            node = theirs
            *parents, leaf = dotted[len(key) + 1:].split('.')
            for part in parents:
                node = node[part]
            node[leaf] = value
    return ours, theirs


CASES = [(model, key) for model in PAPER_CONFIGS for key in OFFICIAL[model]
         if not key.startswith('_')]


@pytest.mark.parametrize('model,key', CASES, ids=[f'{m}:{k}' for m, k in CASES])
def test_config_entry_equals_the_authors(model, key):
    ours, theirs = expected_and_ours(model, key)
    assert differences(ours, theirs, key) == []


def test_deviations_are_real():
    """Each listed deviation is where our config differs (and only there)."""
    for (model, dotted), value in DEVIATIONS.items():
        assert lookup(our_config(model), dotted) == value
        node = OFFICIAL[model]
        if dotted in node:  # a whole entry
            assert node[dotted] != value
            continue
        head, rest = next((k, dotted[len(k) + 1:]) for k in node if dotted.startswith(k + '.'))
        node = node[head]
        for part in rest.split('.'):
            node = node.get(part, NOT_SET) if isinstance(node, dict) else NOT_SET
        assert node != value


def test_the_table_covers_every_model_and_the_recipe():
    for model in PAPER_CONFIGS:
        assert OFFICIAL[model]['_config'].startswith('downstream/')
        assert (REPO / OFFICIAL[model]['_ours']).is_file()
        for key in ('optim_wrapper', 'param_scheduler', 'train_cfg', 'train_dataloader',
                    'model.test_cfg', 'test_dataloader', 'model.data_preprocessor',
                    'model.backbone', 'default_hooks'):
            assert key in OFFICIAL[model], (model, key)


# ----------------------------------------------------------------- param-wise, by effect
def _module_from_names(params: dict, frozen) -> nn.Module:
    """A module tree holding (meta) parameters with exactly these names."""
    root = nn.Module()
    for name, shape in params.items():
        *path, leaf = name.split('.')
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        param = nn.Parameter(torch.empty(shape, device='meta'), requires_grad=not frozen(name))
        node.register_parameter(leaf, param)
    return root


def _lr_and_decay(model: nn.Module, optim_wrapper_cfg) -> dict:
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    wrapper = build_optim_wrapper(model, copy.deepcopy(optim_wrapper_cfg))
    return {names[id(p)]: (group['lr'], group['weight_decay'])
            for group in wrapper.optimizer.param_groups for p in group['params']
            if id(p) in names}


_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


@pytest.mark.parametrize('model', list(PAPER_CONFIGS))
def test_param_groups_equal_the_authors(model):
    """Every trained parameter gets the authors' learning rate and weight decay."""
    from mmmobilemamba.engine.config import detect_codebase, get_registry
    cfg = our_config(model)
    ours = get_registry(detect_codebase(cfg), 'MODELS').build(cfg.model)
    ours_groups = _lr_and_decay(ours, cfg.optim_wrapper)

    shapes = {k: v for k, v in OFFICIAL_MODELS[model]['state_dict'].items()
              if not k.endswith(_BUFFERS)}
    frozen = lambda name: name.endswith(('wt_filter', 'iwt_filter'))  # noqa: E731
    theirs_model = _module_from_names(shapes, frozen)
    assert sum(p.numel() for p in theirs_model.parameters()) == \
        OFFICIAL_MODELS[model]['num_params']
    theirs_groups = _lr_and_decay(theirs_model, OFFICIAL[model]['optim_wrapper'])
    # their names in our layout, each tensor tagged with its index to follow it through
    names = list(theirs_groups)
    renamed = {int(t): k for k, t in convert_official_model(
        {k: torch.tensor(i) for i, k in enumerate(names)}).items()}
    theirs_ours = {renamed[i]: theirs_groups[k] for i, k in enumerate(names)}
    if model.startswith('ssdlite'):  # stage 2 is not built (see _base_/mobilemamba-b1_det.py)
        theirs_ours = {k: v for k, v in theirs_ours.items()
                       if not k.startswith('backbone.stages.2.')}
    assert sorted(set(ours_groups) ^ set(theirs_ours)) == []
    for name, value in theirs_ours.items():
        assert ours_groups[name] == pytest.approx(value, rel=1e-9), name
    # weight decay 0: the SS2D LayerNorms, nothing else (14 in B1: 7 blocks; SSDLite: 5)
    no_decay = {n for n, (_, wd) in ours_groups.items() if wd == 0}
    layer_norms = {n for n in ours_groups if n.endswith(('out_norm.weight', 'out_norm.bias'))}
    assert no_decay == layer_norms and len(layer_norms) == (10 if 'ssdlite' in model else 14)
