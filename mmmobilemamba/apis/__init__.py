"""High-level entry points: configs to models, and the image demo."""
from .inference import SCOPES, build_model, config_scope, load_config, run_demo

__all__ = ['SCOPES', 'build_model', 'config_scope', 'load_config', 'run_demo']
