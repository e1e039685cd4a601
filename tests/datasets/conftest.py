"""Shared fixtures: tiny generated datasets, written once per test session."""
import pytest

from mmmobilemamba.datasets.synthetic import generate_ade_shapes, generate_coco_shapes

TINY_COCO = dict(num_train=6, num_val=4, image_size=128, seed=3)
TINY_ADE = dict(num_train=4, num_val=3, image_size=96, seed=3)


@pytest.fixture(scope='session')
def tiny_coco(tmp_path_factory):
    """Summary dict of a small COCO shapes dataset."""
    return generate_coco_shapes(tmp_path_factory.mktemp('coco'), **TINY_COCO)


@pytest.fixture(scope='session')
def tiny_ade(tmp_path_factory):
    """Summary dict of a small ADE-layout shapes dataset."""
    return generate_ade_shapes(tmp_path_factory.mktemp('ade'), **TINY_ADE)
