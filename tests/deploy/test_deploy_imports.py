"""deploy/ sits above models/, datasets/ and apis/ and beside analysis/: it imports nothing from
analysis/ (fuse_for_inference and the dummy batch moved below both) and its modules import
each other without a cycle at import time; each runtime's module leaves the other alone."""
import ast
from pathlib import Path

import mmmobilemamba.deploy as deploy
from import_checks import assert_no_import_cycle

DEPLOY = Path(deploy.__file__).parent


def _top_level_imports(path: Path):
    """The deploy modules ``path`` imports when it is imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found.update(n.split('.')[0] for n in names)
    return {name for name in found if (DEPLOY / f'{name}.py').exists()}


def test_deploy_modules_import_no_cycle():
    graph = {p.stem: _top_level_imports(p) for p in DEPLOY.glob('*.py') if p.stem != '__init__'}
    assert_no_import_cycle(graph)


def _imported_packages(path: Path):
    """Every module ``path`` imports, at any depth of its code (relative ones with dots)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add('.' * node.level + (node.module or ''))
    return found


def test_deploy_borrows_nothing_from_analysis_and_runtimes_stay_apart():
    for path in DEPLOY.glob('*.py'):
        imported = _imported_packages(path)
        assert not [m for m in imported if m.startswith(('mmmobilemamba.analysis', '..analysis'))], \
            path.name
    assert not [m for m in _imported_packages(DEPLOY / 'executorch.py')
                if m.startswith(('onnx', '.onnx'))]
    assert not [m for m in _imported_packages(DEPLOY / 'onnx.py')
                if m.startswith(('executorch', '.executorch'))]


def test_names_of_the_onnx_module_before_the_shared_path_still_import():
    from mmmobilemamba.deploy import export_config
    from mmmobilemamba.deploy.onnx import (EXPORT_KINDS, ExportedNetwork,  # noqa: F401
                                           ExportResult, OnnxRuntimeModel, compare_outputs,
                                           export_onnx, prepare_for_export)
    from mmmobilemamba.deploy.onnx import export_config as old_export_config
    assert old_export_config is export_config
