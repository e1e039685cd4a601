"""ops/ is pure tensor math without an import cycle: each scan backend has its module, the
custom ops import the backends, the public API imports the custom ops, never the reverse
(imports inside functions included)."""
import ast
from pathlib import Path

import mmmobilemamba.ops as ops
from import_checks import assert_no_import_cycle

OPS = Path(ops.__file__).parent


def _imports(path: Path):
    """The ops modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ''
            if node.level == 1:
                names = [module] if module else [a.name for a in node.names]
            elif module.startswith('mmmobilemamba.ops.'):
                names = [module[len('mmmobilemamba.ops.'):]]
            else:
                names = []
            found.update(n.split('.')[0] for n in names)
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'import_module':
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).startswith('mmmobilemamba.ops.'):
                found.add(arg.value.split('.')[2])
    return {name for name in found if (OPS / f'{name}.py').exists()}


def test_ops_modules_import_no_cycle():
    graph = {p.stem: _imports(p) for p in OPS.glob('*.py') if p.stem != '__init__'}
    assert graph['triton_scan'] <= {'triton_common'}  # a backend imports no front end
    assert 'selective_scan' not in graph['scan_ops'] | graph['scan_torch']
    assert_no_import_cycle(graph)


def test_ops_import_nothing_above_them():
    for path in OPS.glob('*.py'):
        text = path.read_text()
        for layer in ('models', 'engine', 'apis', 'analysis', 'deploy', 'datasets'):
            assert f'mmmobilemamba.{layer}' not in text and f'from ..{layer}' not in text, \
                (path.name, layer)
