"""The selective scan's Triton backend: compiled at run time, nothing to build.

* :func:`recurrence`: ``h_t = a_t h_{t-1} + b_t`` over ``(rows, L, inner)`` float32 tensors in
  either direction, one program per ``(row, block of inner channels)`` walking the ``L`` steps
  once with the state in registers (a step reads one contiguous block of channels).
* :func:`ss2d_scan_forward` / :func:`ss2d_scan_backward`: SS2D's whole two-direction scan in one
  kernel each: softplus of the step sizes, the decays, the recurrence forwards then backwards,
  the read-out, the skip term and the sum of the two directions (forward), and every gradient
  (backward), read in the inputs' own dtype and strides and computed in float32. Their plain
  twins are :func:`~mmmobilemamba.ops.scan_torch.ss2d_scan_forward_torch` and
  :func:`~mmmobilemamba.ops.scan_torch.ss2d_scan_backward_torch`.

This module registers nothing (:mod:`.scan_ops` makes the custom ops), so that a test may
reload it with ``TRITON_INTERPRET=1`` set: Triton then runs the kernels on CPU tensors in its
interpreter (slow: for tests; this package never sets it).
"""
import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from .triton_common import sum_along

__all__ = ['recurrence', 'ss2d_scan_forward', 'ss2d_scan_backward', 'can_run']

_BLOCK = 64


@triton.jit
def _recurrence_kernel(a_ptr, b_ptr, h_ptr, length, inner, REVERSE: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    base = row * length * inner
    h = tl.full([BLOCK], 0.0, tl.float32)  # a builtin, unlike tl.zeros (a @jit helper)
    for i in range(0, length):
        if REVERSE:
            t = length - 1 - i
        else:
            t = i
        offsets = base + t * inner + cols
        a = tl.load(a_ptr + offsets, mask=mask, other=1.0)
        b = tl.load(b_ptr + offsets, mask=mask, other=0.0)
        h = a * h + b
        tl.store(h_ptr + offsets, h, mask=mask)


@triton.jit
def _program_block(channels, N: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):
    """This program's image and block of channels, the states (padded to NP) and their masks."""
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < channels
    states = tl.arange(0, NP)
    smask = states < N
    return tl.program_id(0), cols, cmask, states, smask, cmask[:, None] & smask[None, :]


@triton.jit
def _direction_params(a_ptr, d_ptr, bias_ptr, k, cols, cmask, states, mask2, channels,
                      N: tl.constexpr):
    """Direction ``k``'s parameters of a block of channels: ``A = -exp(A_log)`` (BLOCK, NP),
    the skip ``D`` and the step-size bias (BLOCK,)."""
    param = k * channels + cols
    A = -tl.exp(tl.load(a_ptr + param[:, None] * N + states[None, :], mask=mask2, other=0.0))
    skip = tl.load(d_ptr + param, mask=cmask, other=0.0)
    bias = tl.load(bias_ptr + param, mask=cmask, other=0.0)
    return A, skip, bias


@triton.jit
def _step_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, batch, k, t, cols, cmask, states, smask, bias,
                 su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                 sc_b, sc_k, sc_n, sc_t):
    """Token ``t`` of direction ``k``, in float32 whatever the inputs' dtype: ``u``, the step
    size before and after its softplus (``z``, ``dt``), and the projections ``B_t``, ``C_t``."""
    u = tl.load(u_ptr + batch * su_b + cols * su_c + t * su_t, mask=cmask,
                other=0.0).to(tl.float32)
    z = tl.load(delta_ptr + batch * sd_b + k * sd_k + cols * sd_c + t * sd_t, mask=cmask,
                other=0.0).to(tl.float32) + bias
    dt = tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(z, 20.0))))  # F.softplus
    b_t = tl.load(b_ptr + batch * sb_b + k * sb_k + states * sb_n + t * sb_t, mask=smask,
                  other=0.0).to(tl.float32)
    c_t = tl.load(c_ptr + batch * sc_b + k * sc_k + states * sc_n + t * sc_t, mask=smask,
                  other=0.0).to(tl.float32)
    return u, z, dt, b_t, c_t


@triton.jit
def _ss2d_forward_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, h_ptr,
                         length, channels,
                         su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t,
                         sb_b, sb_k, sb_n, sb_t, sc_b, sc_k, sc_n, sc_t,
                         DIRECTIONS: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                         SAVE_STATES: tl.constexpr, BLOCK: tl.constexpr):
    batch, cols, cmask, states, smask, mask2 = _program_block(channels, N, NP, BLOCK)
    for k in tl.static_range(DIRECTIONS):
        A, skip, bias = _direction_params(a_ptr, d_ptr, bias_ptr, k, cols, cmask, states, mask2,
                                          channels, N)
        h = tl.full([BLOCK, NP], 0.0, tl.float32)
        for i in range(0, length):
            if k == 0:
                t = i
            else:  # the second direction runs from the last token to the first
                t = length - 1 - i
            u, z, dt, b_t, c_t = _step_inputs(
                u_ptr, delta_ptr, b_ptr, c_ptr, batch, k, t, cols, cmask, states, smask, bias,
                su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                sc_b, sc_k, sc_n, sc_t)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b_t[None, :]
            out = sum_along(h * c_t[None, :], axis=1) + skip * u
            y_at = y_ptr + (batch * length + t) * channels + cols
            if k > 0:  # the same program wrote the first direction here
                out += tl.load(y_at, mask=cmask, other=0.0)
            tl.store(y_at, out, mask=cmask)
            if SAVE_STATES:
                at = ((batch * DIRECTIONS + k) * length + t) * channels + cols
                tl.store(h_ptr + at[:, None] * N + states[None, :], h, mask=mask2)


@triton.jit
def _ss2d_backward_kernel(dy_ptr, u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr,
                          h_ptr, du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
                          length, channels,
                          su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t,
                          sb_b, sb_k, sb_n, sb_t, sc_b, sc_k, sc_n, sc_t,
                          DIRECTIONS: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                          BLOCK: tl.constexpr):
    batch, cols, cmask, states, smask, mask2 = _program_block(channels, N, NP, BLOCK)
    for k in tl.static_range(DIRECTIONS):
        A, skip, bias = _direction_params(a_ptr, d_ptr, bias_ptr, k, cols, cmask, states, mask2,
                                          channels, N)
        param = k * channels + cols
        carry = tl.full([BLOCK, NP], 0.0, tl.float32)  # a_{t+1} g_{t+1}, in scan order
        grad_a = tl.full([BLOCK, NP], 0.0, tl.float32)
        grad_skip = tl.full([BLOCK], 0.0, tl.float32)
        grad_bias = tl.full([BLOCK], 0.0, tl.float32)
        for i in range(0, length):
            # against the scan's direction
            if k == 0:
                t = length - 1 - i
                prev = t - 1
            else:
                t = i
                prev = t + 1
            has_prev = (prev >= 0) & (prev < length)
            u, z, dt, b_t, c_t = _step_inputs(
                u_ptr, delta_ptr, b_ptr, c_ptr, batch, k, t, cols, cmask, states, smask, bias,
                su_b, su_c, su_t, sd_b, sd_k, sd_c, sd_t, sb_b, sb_k, sb_n, sb_t,
                sc_b, sc_k, sc_n, sc_t)
            dy = tl.load(dy_ptr + (batch * length + t) * channels + cols, mask=cmask,
                         other=0.0).to(tl.float32)
            row = (batch * DIRECTIONS + k) * length
            h = tl.load(h_ptr + ((row + t) * channels + cols)[:, None] * N + states[None, :],
                        mask=mask2, other=0.0)
            h_prev = tl.load(h_ptr + ((row + prev) * channels + cols)[:, None] * N
                             + states[None, :], mask=mask2 & has_prev, other=0.0)
            decay = tl.exp(dt[:, None] * A)
            g = dy[:, None] * c_t[None, :] + carry
            da_a = g * h_prev * decay
            dx = sum_along(g * b_t[None, :], axis=1)
            e = tl.exp(-tl.abs(z))  # softplus' = sigmoid, in a form that cannot overflow
            sig = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            dz = (dx * u + sum_along(da_a * A, axis=1)) * sig
            grad_u = dx * dt + dy * skip
            tok = (batch * length + t) * channels + cols
            if k > 0:
                grad_u += tl.load(du_ptr + tok, mask=cmask, other=0.0)
            tl.store(du_ptr + tok, grad_u, mask=cmask)
            tl.store(ddelta_ptr + ((batch * DIRECTIONS + k) * length + t) * channels + cols, dz,
                     mask=cmask)
            # B and C are shared by the channels: partial sums over this block
            bc_at = ((batch * DIRECTIONS + k) * length + t) * N + states
            tl.atomic_add(db_ptr + bc_at, sum_along(g * (dt * u)[:, None], axis=0), mask=smask)
            tl.atomic_add(dc_ptr + bc_at, sum_along(dy[:, None] * h, axis=0), mask=smask)
            grad_a += da_a * dt[:, None]
            grad_skip += dy * u
            grad_bias += dz
            carry = decay * g
        # dL/dA_log = dL/dA * A
        tl.atomic_add(da_ptr + param[:, None] * N + states[None, :], grad_a * A, mask=mask2)
        tl.atomic_add(dd_ptr + param, grad_skip, mask=cmask)
        tl.atomic_add(dbias_ptr + param, grad_bias, mask=cmask)


def can_run(tensor: torch.Tensor) -> bool:
    """Whether the kernels can run on ``tensor``'s device here."""
    return tensor.is_cuda or os.environ.get('TRITON_INTERPRET') == '1'


def _check_device(tensor: torch.Tensor) -> None:
    if not can_run(tensor):
        raise RuntimeError("selective scan backend 'triton' needs CUDA tensors (Triton's CPU "
                           'interpreter, TRITON_INTERPRET=1 set before the import, serves '
                           "tests only); on CPU use backend 'torch'")


def recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (``reverse``: ``h_t = a_t h_{t+1} + b_t``) along dim 1 of
    ``(rows, L, inner)`` tensors, zero initial state, float32; no autograd."""
    _check_device(a)
    a = a.contiguous().float()
    b = b.contiguous().float()
    rows, length, inner = a.shape
    h = torch.empty_like(a)
    grid = (rows, triton.cdiv(inner, _BLOCK))
    _recurrence_kernel[grid](a, b, h, length, inner, REVERSE=reverse, BLOCK=_BLOCK)
    return h


def _scan_args(u, delta, A_log, B, C, D, delta_bias):
    batch, channels, length = u.shape
    directions, n_state = delta.shape[1], A_log.shape[1]
    params = (A_log.float().contiguous(), B, C, D.float().contiguous(),
              delta_bias.float().contiguous())
    strides = (*u.stride(), *delta.stride(), *B.stride(), *C.stride())
    meta = dict(DIRECTIONS=directions, N=n_state, NP=triton.next_power_of_2(n_state),
                BLOCK=_BLOCK)
    grid = (batch, triton.cdiv(channels, _BLOCK))
    return (batch, directions, channels, n_state, length), params, strides, meta, grid


def ss2d_scan_forward(u: torch.Tensor, delta: torch.Tensor, A_log: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                      save_states: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """SS2D's scan (see :func:`mmmobilemamba.ops.ss2d_scan`) in one kernel: ``y`` (batch, L, d)
    float32, and with ``save_states`` the states ``(batch, K, L, d, N)`` (else an empty
    tensor)."""
    _check_device(u)
    (batch, directions, channels, n_state, length), params, strides, meta, grid = \
        _scan_args(u, delta, A_log, B, C, D, delta_bias)
    A_log32, B, C, D32, bias32 = params
    y = torch.empty(batch, length, channels, device=u.device, dtype=torch.float32)
    h = torch.empty((batch, directions, length, channels, n_state) if save_states else (0,),
                    device=u.device, dtype=torch.float32)
    _ss2d_forward_kernel[grid](u, delta, A_log32, B, C, D32, bias32, y, h, length, channels,
                               *strides, SAVE_STATES=save_states, **meta)
    return y, h


def ss2d_scan_backward(grad_y: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                       A_log: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                       delta_bias: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The gradients of :func:`ss2d_scan_forward` given ``grad_y`` (batch, L, d), float32:
    ``(du, ddelta, dA_log, dB, dC, dD, ddelta_bias)`` shaped as the inputs (token-major memory).

    The states are recomputed by the forward kernel, then one kernel walks each direction
    backwards; the gradients of the shared B, C and of the parameters are summed atomically.
    """
    _, h = ss2d_scan_forward(u, delta, A_log, B, C, D, delta_bias, save_states=True)
    (batch, directions, channels, n_state, length), params, strides, meta, grid = \
        _scan_args(u, delta, A_log, B, C, D, delta_bias)
    A_log32, B, C, D32, bias32 = params
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty(batch, length, channels, **f32)
    ddelta = torch.empty(batch, directions, length, channels, **f32)
    dB = torch.zeros(batch, directions, length, n_state, **f32)
    dC = torch.zeros(batch, directions, length, n_state, **f32)
    dA = torch.zeros(directions * channels, n_state, **f32)
    dD = torch.zeros(directions * channels, **f32)
    dbias = torch.zeros(directions * channels, **f32)
    _ss2d_backward_kernel[grid](grad_y.contiguous(), u, delta, A_log32, B, C, D32, bias32, h,
                                du, ddelta, dA, dB, dC, dD, dbias, length, channels, *strides,
                                **meta)
    return (du.transpose(1, 2), ddelta.transpose(2, 3), dA, dB.transpose(2, 3),
            dC.transpose(2, 3), dD, dbias)
