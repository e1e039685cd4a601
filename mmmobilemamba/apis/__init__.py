"""High-level entry points: configs to models, and the image demo."""
from mmmobilemamba.engine.config import detect_codebase, load_config

from .inference import build_model, run_demo

__all__ = ['build_model', 'detect_codebase', 'load_config', 'run_demo']
