"""Shared by the scan tests: a scan's output and input gradients, and their comparison."""
import torch


def scan_and_grads(fn, inputs, **kwargs):
    """``fn(**inputs, **kwargs)`` and the gradient of each input under a weighted sum of the
    output (a weight per element, so that no gradient is a plain sum). The weight is made on
    the output's device (a CUDA output gets a CUDA weight)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves, **kwargs)
    weight = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    (out.float() * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def assert_same_scan(fast, twin, atol=1e-5, grad_atol=1e-4, rtol=1e-4, grad_rtol=1e-4):
    """Two :func:`scan_and_grads` results agree (a missing gradient counts as zero)."""
    (out, grads), (ref, ref_grads) = fast, twin
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for name, ref_grad in ref_grads.items():
        grad = grads[name] if grads[name] is not None else torch.zeros_like(ref_grad)
        torch.testing.assert_close(grad, ref_grad, atol=grad_atol, rtol=grad_rtol,
                                   msg=lambda text, name=name: f'{name}: {text}')


def token_major_inputs(batch: int, length: int, d: int, n: int = 1, seed: int = 0,
                       delta_scale: float = 1.0) -> dict:
    """One direction's scan inputs in the token-major layout (batch, L, D), on the CPU:
    ``u, delta, A, B, C, D, delta_bias``."""
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(batch, length, d, generator=g),
                delta=delta_scale * torch.randn(batch, length, d, generator=g),
                A=-torch.rand(d, n, generator=g) - 0.05,
                B=torch.randn(batch, length, n, generator=g),
                C=torch.randn(batch, length, n, generator=g),
                D=torch.randn(d, generator=g),
                delta_bias=0.1 * torch.randn(d, generator=g))
