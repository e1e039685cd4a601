"""Shared by the deploy tests: models whose every norm does something; SS2D scan operands, the
scan's float64 definition and the cases its kernels are checked on."""
import torch


def randomise_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics and norm affines (BatchNorm, GroupNorm), so that no branch
    is an identity (the zero-initialised ones) and a wrong fold shows; returns ``model`` in
    eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    model.eval()
    return model


def sequential_scan(u, delta, A, B, C, skip):
    """SS2D's two-direction scan step by step in float64: the definition."""
    u, delta, A, B, C, skip = (t.double() for t in (u, delta, A, B, C, skip))
    batch, directions, channels, length = delta.shape
    y = u * skip.view(1, -1, 1)
    dt = torch.nn.functional.softplus(delta)
    for k in range(directions):
        a = A[k * channels:(k + 1) * channels]                          # (d, N)
        h = torch.zeros(batch, channels, a.shape[1], dtype=torch.float64)
        steps = range(length - 1, -1, -1) if k == 1 else range(length)
        for t in steps:
            step = dt[:, k, :, t].unsqueeze(-1)                            # (b, d, 1)
            h = torch.exp(step * a) * h + step * u[:, :, t, None] * B[:, k, None, :, t]
            y[:, :, t] += (h * C[:, k, None, :, t]).sum(-1)
    return y


def scan_inputs(batch, directions, channels, length, states, delta_scale=1.0, seed=0):
    """Random scan operands ``(u, delta, A, B, C, skip)`` (A negative)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, directions, channels, length, generator=g) * delta_scale
    A = -torch.rand(directions * channels, states, generator=g) * 4 - 0.05
    B = torch.randn(batch, directions, states, length, generator=g)
    C = torch.randn(batch, directions, states, length, generator=g)
    skip = torch.randn(channels, generator=g)
    return u, delta, A, B, C, skip


# (batch, directions, channels, length, states, delta_scale) the scan kernels are checked on
SCAN_CASES = [
    (1, 2, 5, 1, 1, 1.0),        # one step; 11 of the 16 lanes empty
    (2, 2, 20, 300, 1, 1.0),     # tiles of 128 steps: two whole, one partial, both ways
    (1, 1, 3, 40, 3, 1.0),       # one direction, three states
    (1, 2, 16, 130, 2, 30.0),    # softplus at both ends (x up to ~100), decays to ~0
]
