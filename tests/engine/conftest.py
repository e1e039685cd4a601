"""Engine tests: importing the package registers its hooks, transforms and safe globals."""
import pytest

import mmmobilemamba.engine  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_mmengine_globals():
    """Each runner registers a MessageHub/Visualizer/Logger instance: keep tests independent."""
    yield
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer
    for manager in (MessageHub, MMLogger, Visualizer):
        manager._instance_dict.clear()
