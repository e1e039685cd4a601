"""What each inference runtime provides to the shared export path (:mod:`.export`): writing the
network (float, and int8 from calibration images) and running a written file.

A runtime adds only what is its own: :class:`~mmmobilemamba.deploy.onnx.OnnxRuntime`
(``torch.onnx`` + onnxruntime) and :class:`~mmmobilemamba.deploy.executorch.ExecuTorchRuntime`
(``torch.export`` + ExecuTorch's XNNPACK delegate). Folding, verification against PyTorch,
the record and the post-processing are shared.
"""
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .network import ExportedNetwork
from .quantization import FloatParts

__all__ = ['ExportedBytes', 'Runtime', 'RuntimeNotInstalledError', 'Session', 'get_runtime',
           'RUNTIMES']


class RuntimeNotInstalledError(ImportError):
    """A runtime's package is missing; the message says what to install."""


@dataclass
class ExportedBytes:
    """A serialised network and what its runtime reports about it.

    Args:
        data (bytes): the file's content.
        record (dict): entries for the record (e.g. ExecuTorch's ``delegation``).
    """

    data: bytes
    record: Dict = field(default_factory=dict)


class Session(ABC):
    """A loaded file, ready to run on preprocessed images.

    Attributes:
        threads (int): the CPU threads it runs on.
    """

    threads: int = 0

    @abstractmethod
    def run(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        """The network's outputs for one preprocessed image ``(1, 3, H, W)`` float32.

        Args:
            inputs (Tensor): the image, on the CPU.
        """


class Runtime(ABC):
    """An inference runtime: how to write a network for it and how to run what was written.

    Attributes:
        name (str): the record's ``runtime`` ('onnxruntime', 'executorch').
        suffix (str): the file extension ('.onnx', '.pte').
        packages (tuple[str]): modules the runtime needs (imported to check).
        install_hint (str): what to install when one is missing.
    """

    name: str = ''
    suffix: str = ''
    packages: Tuple[str, ...] = ()
    install_hint: str = ''

    def require(self) -> None:
        """Check that the runtime's packages import.

        Raises:
            RuntimeNotInstalledError: naming the missing package and what to install.
        """
        for package in self.packages:
            try:
                importlib.import_module(package)
            except ImportError as err:
                raise RuntimeNotInstalledError(
                    f'{self.name} export needs the {package!r} package, which does not import '
                    f'({err}): {self.install_hint}') from err

    def versions(self) -> Dict[str, str]:
        """torch's and the runtime's package versions, for the record."""
        from importlib.metadata import PackageNotFoundError, version
        found = {'torch': torch.__version__}
        for package in self.distributions():
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                pass
        return found

    def distributions(self) -> Sequence[str]:
        """The pip distributions whose versions the record gives."""
        return ()

    def adapt(self, network: ExportedNetwork) -> Dict[str, int]:
        """Rewrite ``network`` (a folded copy, about to be exported and quantised) in place
        where the runtime runs another form of a module faster; the same values.

        Args:
            network (ExportedNetwork): what will be exported.

        Returns:
            dict: modules replaced, by kind (for the record; empty: none).
        """
        return {}

    @abstractmethod
    def export(self, network: ExportedNetwork, inputs: torch.Tensor,
               output_names: Sequence[str]) -> ExportedBytes:
        """Write ``network`` (folded, eval mode) for inputs shaped like ``inputs``, float32.

        Args:
            network (ExportedNetwork): what to export.
            inputs (Tensor): one preprocessed image; fixes the static input shape.
            output_names (Sequence[str]): the outputs' names.
        """

    @abstractmethod
    def quantize(self, network: ExportedNetwork, inputs: torch.Tensor,
                 output_names: Sequence[str], float_export: ExportedBytes,
                 calibration: Sequence[torch.Tensor],
                 float_parts: FloatParts) -> ExportedBytes:
        """Write ``network`` with int8 weights and activations (post-training static
        quantisation), calibrated on ``calibration``; the parts ``float_parts`` names stay
        float (their nodes are counted into ``float_parts``).

        Args:
            network (ExportedNetwork): what to export.
            inputs (Tensor): one preprocessed image; fixes the static input shape.
            output_names (Sequence[str]): the outputs' names.
            float_export (ExportedBytes): this runtime's float export of ``network``.
            calibration (Sequence[Tensor]): preprocessed images shaped like ``inputs``.
            float_parts (FloatParts): which parts of MobileMamba stay float.
        """

    def finalize(self, exported: ExportedBytes) -> ExportedBytes:
        """The file as written: what the runtime needs and nothing for debugging only.

        Args:
            exported (ExportedBytes): an export or quantisation's output.
        """
        return exported

    @abstractmethod
    def load(self, data: Union[bytes, str], threads: Optional[int] = None) -> Session:
        """A session on an exported file (a path) or its bytes.

        Args:
            data (bytes | str): the file's content or its path.
            threads (int, optional): CPU threads (None: the runtime's default).
        """


def get_runtime(name: str, **options) -> Runtime:
    """The runtime called ``name`` ('onnxruntime' or 'executorch').

    Args:
        name (str): a key of :data:`RUNTIMES`.
        **options: the runtime's own options (ExecuTorch: ``scan_kernel``).
    """
    if name not in RUNTIMES:
        raise ValueError(f'unknown runtime {name!r}: choose from {sorted(RUNTIMES)}')
    module_name, class_name = RUNTIMES[name]
    module = importlib.import_module(module_name, __package__)
    try:
        return getattr(module, class_name)(**options)
    except TypeError as err:
        raise ValueError(f'{name} takes no option(s) {sorted(options)}: {err}') from None


# runtime name -> (module, class); imported on use, so that neither runtime is needed by the other
RUNTIMES: Dict[str, Tuple[str, str]] = {
    'onnxruntime': ('.onnx', 'OnnxRuntime'),
    'executorch': ('.executorch', 'ExecuTorchRuntime'),
}
