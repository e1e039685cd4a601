"""int8 exports: which parts of MobileMamba stay float, shared by both runtimes' quantisers.

Post-training static quantisation (int8 weights per output channel, symmetric; int8
activations per tensor, calibrated) suits convolutions: every convolution of the backbone,
neck and heads is quantised, and so are the elementwise ops between them. One part of
MobileMamba is different and stays float by default:

* ``'scan'``: SS2D's selective scan and what surrounds it (the low-rank step-size
  projections, ``softplus``, ``exp`` of the decays, the first-order recurrence, the skip term,
  LayerNorm and the SiLU gate). Its values span orders of magnitude (decays near 1 multiplied
  over hundreds of tokens) and errors compound along the sequence. Quantised, it cost the
  quickstart RetinaNet 1.6 points of box mAP (onnxruntime: 0.351 against 0.367 float; 0.368
  with the scan float). SS2D's convolutions (input and output projections, the depthwise
  conv) are quantised.

``'wavelet'`` (WTE-Mamba's polyphase reshuffles and the sum with the scan's output, around its
quantised convolution) may be kept float too; it quantises well (box mAP 0.369 float against
0.368, mIoU 59.55 against 59.51: the same).

A part named in :class:`FloatParts` keeps every node of its modules float except the
convolutions; the record lists the parts and how many nodes each kept float.
"""
from collections import defaultdict
from typing import Dict, Iterable, Optional, Sequence, Tuple

__all__ = ['DEFAULT_FLOAT_PARTS', 'FLOAT_PART_MODULES', 'FloatParts']

# part -> (the class name that encloses it, what it is)
FLOAT_PART_MODULES: Dict[str, Tuple[str, str]] = {
    'scan': ('SS2D', "SS2D's scan, norm and gate (its convolutions are int8)"),
    'wavelet': ('WTEMamba', "WTE-Mamba's wavelet reshuffles and sum (its convolution is int8)"),
}
DEFAULT_FLOAT_PARTS: Tuple[str, ...] = ('scan',)


def _is_convolution(op_name: str) -> bool:
    return 'conv' in op_name.rsplit('::', 1)[-1].lower()


class FloatParts:
    """The parts of MobileMamba an int8 export keeps float, and the nodes they kept.

    Args:
        parts (Iterable[str]): keys of :data:`FLOAT_PART_MODULES` ('scan', 'wavelet'); empty
            quantises everything the quantiser supports.
    """

    def __init__(self, parts: Iterable[str] = DEFAULT_FLOAT_PARTS) -> None:
        self.parts = tuple(parts)
        unknown = [p for p in self.parts if p not in FLOAT_PART_MODULES]
        if unknown:
            raise ValueError(f'unknown float part(s) {unknown}: choose from '
                             f'{sorted(FLOAT_PART_MODULES)}')
        self._nodes: Dict[str, set] = defaultdict(set)
        self._modules: Dict[str, set] = defaultdict(set)

    def part_of(self, hierarchy: Sequence[Tuple[str, str]], op_name: str,
                node_name: str) -> Optional[str]:
        """The float part a graph node belongs to, or None when it is quantised.

        The innermost enclosing module of a part's class decides (a scan inside a WTE-Mamba
        block is the scan's); convolutions are quantised everywhere. A node kept float is
        counted for :meth:`report`.

        Args:
            hierarchy (Sequence[tuple[str, str]]): the node's enclosing modules, outermost
                first, as ``(module path, class name)`` (qualified or not).
            op_name (str): the node's operator (e.g. 'aten.conv2d.default').
            node_name (str): the node's name in its graph (for counting).
        """
        if _is_convolution(op_name):
            return None
        classes = {cls: part for part, (cls, _) in FLOAT_PART_MODULES.items()}
        for path, class_name in reversed(list(hierarchy)):
            part = classes.get(str(class_name).rsplit('.', 1)[-1])
            if part is None:
                continue
            if part not in self.parts:
                return None
            self._nodes[part].add(node_name)
            self._modules[part].add(path)
            return part
        return None

    def report(self) -> Dict[str, dict]:
        """``{part: {'what', 'nodes', 'modules'}}`` of the parts that kept nodes float."""
        return {part: dict(what=FLOAT_PART_MODULES[part][1], nodes=len(self._nodes[part]),
                           modules=len(self._modules[part]))
                for part in self.parts if self._nodes[part]}
