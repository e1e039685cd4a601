"""The export form's SS2D scan as one operator, for runtimes that have a kernel of it.

``mmmobilemamba::ss2d_scan_graph(u, delta, A, B, C, skip)`` computes
:func:`~mmmobilemamba.ops.scan_chunked.ss2d_scan_graph` (its PyTorch implementation is that
function: the reference the kernels are tested against), and ``ss2d_scan_graph.out`` is the
same writing into ``out``: the form ExecuTorch's programs call. ExecuTorch's kernel of it is
``mmmobilemamba/deploy/csrc/ss2d_scan.cpp`` (built and loaded by the deployment package's
``scan_kernel`` module). ``torch.export`` keeps the operator as one node
(it is not decomposed), so a program holds one call per SS2D instead of the ~70 graph ops of
the scan. Inference only: the operator has no gradient.
"""
import torch

from .scan_chunked import ss2d_scan_graph

__all__ = ['SCAN_OPERATOR', 'ss2d_scan_graph_op']

SCAN_OPERATOR = 'mmmobilemamba::ss2d_scan_graph'
_ARGS = 'Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor skip'

_library = torch.library.Library('mmmobilemamba', 'FRAGMENT')
_library.define(f'ss2d_scan_graph({_ARGS}) -> Tensor')
_library.define(f'ss2d_scan_graph.out({_ARGS}, *, Tensor(a!) out) -> Tensor(a!)')


def _scan(u, delta, A, B, C, skip):
    return ss2d_scan_graph(u, delta, A, B, C, skip)


def _scan_out(u, delta, A, B, C, skip, *, out):
    return out.copy_(ss2d_scan_graph(u, delta, A, B, C, skip))


_library.impl('ss2d_scan_graph', _scan, 'CompositeExplicitAutograd')
_library.impl('ss2d_scan_graph.out', _scan_out, 'CompositeExplicitAutograd')


@torch.library.register_fake(SCAN_OPERATOR)
def _(u, delta, A, B, C, skip):
    return u.new_empty(u.shape, dtype=torch.float32)


@torch.library.register_fake(SCAN_OPERATOR + '.out')
def _(u, delta, A, B, C, skip, *, out):
    return out


def ss2d_scan_graph_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """:func:`~mmmobilemamba.ops.scan_chunked.ss2d_scan_graph` as the one operator
    ``mmmobilemamba::ss2d_scan_graph`` (same arguments and result, no gradient).

    Args:
        u (Tensor): inputs, (batch, d, L).
        delta (Tensor): step sizes before the softplus, bias included, (batch, K, d, L).
        A (Tensor): the state matrix (negative), (K*d, N).
        B (Tensor): input projections, (batch, K, N, L).
        C (Tensor): output projections, (batch, K, N, L).
        skip (Tensor): the skip weights summed over the directions, (d,).

    Returns:
        Tensor: ``y`` (batch, d, L), float32.
    """
    return torch.ops.mmmobilemamba.ss2d_scan_graph(u, delta, A, B, C, skip)
