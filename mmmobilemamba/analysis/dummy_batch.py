"""The synthetic one-image batch, from its home :mod:`mmmobilemamba.datasets.dummy_batch`
(the analysis and deploy packages both take it from there)."""
from mmmobilemamba.datasets.dummy_batch import DEFAULT_SHAPES, make_dummy_batch, preprocess

__all__ = ['DEFAULT_SHAPES', 'make_dummy_batch', 'preprocess']
