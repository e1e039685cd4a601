"""Loading released, downstream and own checkpoints, and the converter tool."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmmobilemamba.models import MobileMamba, convert_official_checkpoint
from mmmobilemamba.models.checkpoint import load_backbone_checkpoint

ROOT = Path(__file__).parents[2]
DATA = ROOT / 'tests' / 'data'


@pytest.fixture(scope='module')
def release():
    fx = torch.load(DATA / 'mobilemamba_tiny_parity.pt')
    cfg = fx['config']
    arch = dict(embed_dims=cfg['embed_dim'], depths=cfg['depth'], global_ratios=cfg['global_ratio'],
                local_ratios=cfg['local_ratio'], kernel_sizes=cfg['kernels'])
    return arch, fx['state_dict']


def _payload():
    return 'ran code'


def _same_weights(model, state):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def _save(tmp_path, obj, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize('wrap', ['bare', 'net', 'net_E', 'mmdet', 'own', 'own_mmdet'])
def test_every_wrapper_format_loads_through_init_cfg(tmp_path, release, wrap):
    arch, official = release
    expected = convert_official_checkpoint(official)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    objs = {
        'bare': official,
        'net': {'net': official},
        'net_E': {'net': official, 'net_E': ema},
        'mmdet': {'meta': {}, 'state_dict': {
            **{'backbone.' + k: v for k, v in official.items() if not k.startswith('head')},
            'neck.conv.weight': torch.zeros(1)}},
        'own': expected,
        'own_mmdet': {'state_dict': {'backbone.' + k: v for k, v in expected.items()}},
    }
    path = _save(tmp_path, objs[wrap])
    model = MobileMamba(arch, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    want = convert_official_checkpoint(ema) if wrap == 'net_E' else expected
    assert _same_weights(model, want)


def test_report_lists_missing_and_unexpected(release):
    arch, official = release
    partial = {k: v for k, v in official.items() if 'blocks3' not in k}
    partial['extra.weight'] = torch.zeros(2)
    report = load_backbone_checkpoint(MobileMamba(arch), partial)
    assert report['missing'] and all(k.startswith('stages.2') for k in report['missing'])
    assert report['unexpected'] == ['extra.weight']


def test_require_all_refuses_a_checkpoint_lacking_backbone_tensors(release):
    """Exports need every tensor: a partial checkpoint is an error naming what is missing,
    while one that holds the whole backbone (plus other keys) loads."""
    arch, official = release
    partial = {k: v for k, v in official.items() if 'blocks3' not in k}
    with pytest.raises(ValueError, match=r'lacks \d+ of the \d+ tensors.*stages\.2'):
        load_backbone_checkpoint(MobileMamba(arch), partial, require_all=True)
    report = load_backbone_checkpoint(MobileMamba(arch),
                                      {**official, 'extra.weight': torch.zeros(2)},
                                      require_all=True)
    assert not report['missing'] and report['unexpected'] == ['extra.weight']


def test_checkpoint_of_another_arch_raises_with_names(tmp_path, release):
    _, official = release
    with pytest.raises(ValueError, match='shape mismatches: patch_embed'):
        load_backbone_checkpoint(MobileMamba('t2'), official)


def test_nothing_to_load_raises(release):
    arch, _ = release
    with pytest.raises(ValueError, match='no tensor that this MobileMamba expects'):
        load_backbone_checkpoint(MobileMamba(arch), {'fc.weight': torch.zeros(3)})


def test_missing_file_says_where_to_get_weights(release):
    arch, _ = release
    model = MobileMamba(arch, init_cfg=dict(type='Pretrained', checkpoint='/nonexistent.pth'))
    with pytest.raises(FileNotFoundError, match='mobilemamba_official.py'):
        model.init_weights()


def test_unsafe_pickle_is_refused(tmp_path, release):
    arch, _ = release

    # any non-allow-listed global (here a function): weights_only refuses to build it
    path = _save(tmp_path, {'net': {}, 'args': _payload})
    with pytest.raises(RuntimeError, match='weights_only'):
        load_backbone_checkpoint(MobileMamba(arch), path)


def test_converter_tool_writes_loadable_file(tmp_path, release):
    arch, official = release
    src = _save(tmp_path, {'net': official}, 'release.pth')
    dst = tmp_path / 'converted.pth'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/model_converters/mobilemamba_official.py'), src,
         str(dst)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['source'] == "release checkpoint ['net']"
    model = MobileMamba(arch, init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    assert _same_weights(model, convert_official_checkpoint(official))


def test_pretrained_none_trains_from_scratch_with_a_warning(release):
    arch, _ = release
    model = MobileMamba(arch, init_cfg=dict(type='Pretrained', checkpoint=None))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match='from scratch'):
        model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_keys_and_shapes_of_zip_and_legacy_files(tmp_path, release):
    """Checks map zip-format files (nothing read but the pickle); legacy files are read."""
    from mmmobilemamba.models.checkpoint import compare_with_model
    arch, official = release
    model = MobileMamba(arch)
    for legacy in (False, True):
        path = tmp_path / f'legacy_{legacy}.pth'
        torch.save({'state_dict': convert_official_checkpoint(official)}, path,
                   _use_new_zipfile_serialization=not legacy)
        report = compare_with_model(model, str(path))
        assert report.exact and len(report.loaded) == len(model.state_dict())
