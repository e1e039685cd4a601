"""Shared by the tests that call a command-line tool's ``main(argv)`` in-process (no
interpreter start, no second import of torch)."""
import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(relative: str) -> ModuleType:
    """The tool ``tools/<relative>`` (e.g. 'analysis/profile_executorch.py') as a module."""
    path = TOOLS / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
