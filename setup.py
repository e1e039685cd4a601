"""Install mmmobilemamba: ``pip install -e .`` (requirements in ``requirements/``)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>``, comments and blanks dropped."""
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines if ln.split('#')[0].strip()]


def read_version() -> str:
    namespace: dict = {}
    exec((HERE / 'mmmobilemamba' / 'version.py').read_text(), namespace)
    return namespace['__version__']


setup(
    name='mmmobilemamba',
    version=read_version(),
    description='MobileMamba backbones for OpenMMLab detection and segmentation',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    # the ExecuTorch scan kernel's source, compiled on first use (deploy/scan_kernel.py)
    package_data={'mmmobilemamba.deploy': ['csrc/*.cpp', 'csrc/*.h']},
    install_requires=['torch>=2.0'] + read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt'),
                    'deploy': read_requirements('deploy.txt'),
                    'executorch': read_requirements('executorch.txt')},
    zip_safe=False,
)
