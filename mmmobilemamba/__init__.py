"""MobileMamba for OpenMMLab dense prediction.

Importing the package (configs do it with ``custom_imports``) registers the backbone and neck
with mmdet and mmseg, and the hooks, transforms and metrics with mmengine's root registries.
"""
import warnings

# setuptools >= 80 warns at each import of pkg_resources, which mmengine 0.10 makes for its
# package lookups (three times per command): nothing a user of this package can act on. Other
# warnings are left as they are.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)

from . import engine, models  # noqa: E402,F401  (registration side effects)
from .models import MobileMamba, convert_official_checkpoint, convert_official_model  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['__version__', 'MobileMamba', 'convert_official_checkpoint', 'convert_official_model']
