"""Shared by the import-graph tests of the package's folders."""
from typing import Dict, Set


def assert_no_import_cycle(graph: Dict[str, Set[str]]) -> None:
    """Fail naming the cycle when module -> imported modules ``graph`` has one."""

    def visit(node, path):
        assert node not in path, f'import cycle: {" -> ".join(path + [node])}'
        for child in graph.get(node, ()):
            visit(child, path + [node])

    for module in graph:
        visit(module, [])
