"""The quickstart configs resolve to the settings they were written with.

Their schedule, hooks and runtime live in ``configs/quickstart/_base_/demo_{coco,ade}_runtime.py``
(once written out in each config). ``tests/data/quickstart_resolved.json`` holds every
config's resolved dict (``Config.fromfile(path).to_dict()``, tuples as lists) as it was before
that move; a change to a base that alters a quickstart config shows up here, key by key.

After an intended change, rewrite the file and review its diff:
    PYTHONPATH=$PWD python tests/configs/test_quickstart_resolved.py --update
"""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / 'configs' / 'quickstart'
SNAPSHOT = REPO / 'tests' / 'data' / 'quickstart_resolved.json'
CONFIGS = sorted(p.name for p in QUICKSTART.glob('*.py'))


def resolved(path: Path) -> dict:
    """``path``'s config as plain JSON values (dicts, lists, numbers, strings, None)."""
    from mmengine.config import Config
    return json.loads(json.dumps(Config.fromfile(str(path)).to_dict()))


def flatten(value, path: str = '') -> dict:
    """``{dotted path: leaf}`` of a JSON value: ``model.backbone.arch``, ``pipeline[2].type``."""
    if isinstance(value, dict) and value:
        items = ((f'{path}.{k}' if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list) and value:
        items = ((f'{path}[{i}]', v) for i, v in enumerate(value))
    else:  # a leaf, or an empty dict / list (the top-level one has no path: nothing)
        return {path: value} if path else {}
    return {key: leaf for sub, v in items for key, leaf in flatten(v, sub).items()}


def differences(ours, expected) -> list:
    """Every leaf where two JSON values differ (dict order does not count)."""
    ours, expected = flatten(ours), flatten(expected)
    return [f'{key}: now {ours.get(key, "<not set>")!r}, expected '
            f'{expected.get(key, "<not set>")!r}'
            for key in sorted(set(ours) | set(expected))
            if ours.get(key, '<not set>') != expected.get(key, '<not set>')]


def test_the_snapshot_covers_every_quickstart_config():
    assert sorted(json.loads(SNAPSHOT.read_text())) == CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_quickstart_config_resolves_as_before(name):
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    expected = json.loads(SNAPSHOT.read_text())[name]
    assert differences(resolved(QUICKSTART / name), expected) == []


def test_differences_names_the_changed_keys():
    assert differences({'a': {'b': 1, 'c': [1, 2]}}, {'a': {'c': [1, 3], 'b': 1}}) == [
        'a.c[1]: now 2, expected 3']
    assert differences({'x': 1}, {}) == ["x: now 1, expected '<not set>'"]


def _update(root: Path = QUICKSTART) -> None:
    """Rewrite the snapshot from the configs under ``root`` (default: the repository's)."""
    snapshot = {name: resolved(root / name) for name in sorted(p.name for p in root.glob('*.py'))}
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + '\n')
    print(f'wrote {SNAPSHOT} ({len(snapshot)} configs from {root})')


if __name__ == '__main__':
    if sys.argv[1:2] != ['--update']:
        sys.exit(f'usage: {sys.argv[0]} --update [QUICKSTART_DIR]')
    _update(Path(sys.argv[2]) if len(sys.argv) > 2 else QUICKSTART)
