"""Test-suite root: being here puts ``tests/`` on ``sys.path`` (pytest's default import mode),
so every test module can import the shared helpers beside it (``tiny_models``)."""
