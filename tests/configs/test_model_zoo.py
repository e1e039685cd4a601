"""configs/mobilemamba/metafile.yml and docs/model_zoo.md: the model zoo of the paper's models."""
import json
import shlex
from pathlib import Path

import pytest
import yaml

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

from mmmobilemamba.engine.config import detect_codebase, get_registry  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
METAFILE = yaml.safe_load((REPO / 'configs' / 'mobilemamba' / 'metafile.yml').read_text())
ZOO = (REPO / 'docs' / 'model_zoo.md').read_text()
OFFICIAL = json.loads((REPO / 'tests' / 'data' / 'official_downstream_models.json').read_text())
# metafile name (our config's) -> the authors' model in tests/data
OFFICIAL_NAMES = {Path(entry['_ours']).stem: name for name, entry in
                  json.loads((REPO / 'tests' / 'data' / 'official_settings.json').read_text()).items()
                  if not name.startswith('_')}
MODELS = {m['Name']: m for m in METAFILE['Models']}


def test_every_paper_config_is_in_the_zoo_once():
    assert sorted(MODELS) == sorted(OFFICIAL_NAMES)
    paper_configs = sorted(str(p.relative_to(REPO))
                           for p in (REPO / 'configs' / 'mobilemamba').glob('*.py'))
    assert sorted(m['Config'] for m in MODELS.values()) == paper_configs
    assert METAFILE['Collections'][0]['Name'] == 'MobileMamba'


@pytest.mark.parametrize('name', sorted(OFFICIAL_NAMES))
def test_entry_names_its_config_release_and_command(name):
    entry = MODELS[name]
    meta = entry['Metadata']
    assert entry['In Collection'] == 'MobileMamba'
    assert (REPO / entry['Config']).is_file()
    assert meta['Release Parameters'] == OFFICIAL[OFFICIAL_NAMES[name]]['num_params']
    released = meta['Released File']
    assert released.startswith('weights/downstream/') and released.endswith('.pth')
    command = shlex.split(meta['Evaluation Command'])
    assert command == ['python', 'tools/test.py', entry['Config'], released]
    assert entry['Weights'].startswith('https://drive.google.com/')
    metrics = [metric for result in entry['Results'] for metric in result['Metrics']]
    assert metrics == (['box AP', 'mask AP'] if 'mask-rcnn' in name else
                       ['box AP'] if 'coco' in name else ['mIoU'])
    # the doc's table and commands say the same
    assert f'{entry["Config"]} {released}' in ZOO
    for result in entry['Results']:
        for value in result['Metrics'].values():
            assert str(value) in ZOO


@pytest.mark.parametrize('name', sorted(OFFICIAL_NAMES))
def test_parameter_count_is_our_model_of_the_config(name):
    cfg = Config.fromfile(str(REPO / MODELS[name]['Config']))
    model = get_registry(detect_codebase(cfg), 'MODELS').build(cfg.model)
    assert MODELS[name]['Metadata']['Parameters'] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(OFFICIAL_NAMES))
def test_flops_are_what_get_flops_counts(name):
    from mmmobilemamba.analysis import config_complexity
    meta = MODELS[name]['Metadata']
    width, height = map(int, meta['Input Size'].split('x'))
    report = config_complexity(str(REPO / MODELS[name]['Config']), shape=(height, width))
    assert report.flops == pytest.approx(meta['FLOPs'], rel=1e-6)


def test_readme_links_the_zoo_on_its_first_screen():
    first_screen = '\n'.join((REPO / 'README.md').read_text().splitlines()[:30])
    assert 'docs/model_zoo.md' in first_screen
