"""Lean midpoint (torchsde's ``method="midpoint"``) for the Stratonovich SDE and the CDE on an interpolated path.

One step from ``t_k`` to ``t_{k+1} = t_k + dt``, ``t' = t_k + dt / 2``, same increment ``dW_k`` in both stages:

    y' = y_k + f(t_k, y_k) dt / 2 + g(t_k, y_k) dW_k / 2,    y_{k+1} = y_k + f(t', y') dt + g(t', y') dW_k.

For the CDE (torchcde: drift ``func(t, z) @ dX/dt(t)``, zero diffusion) ``dX/dt`` is taken as torchcde's
interpolations take it (``slopes``), from the piece *left* of ``t`` (``bucketize - 1``, clamped): at a knot
``t_k`` the piece ending there (piece 0 at t0), at ``t'`` the piece containing it.

Gradients, ``adjoint=True``: torchsde's continuous adjoint (``sdeint_adjoint(method="midpoint",
adjoint_method="midpoint")``; for the CDE ``torchcde.cdeint(backend="torchsde", adjoint=True)``). The backward
pass solves the Stratonovich adjoint SDE of the augmented state ``(y, a, a_theta)`` backwards by midpoint, with
the same increments ``dW_k`` (torchsde's ``ReverseBrownian`` does not negate; the adjoint drift and diffusion
are). Writing ``F(t, y) v`` for ``f dt + g dW_k`` (CDE: ``func(t, y) dX/dt(t) dt``), step ``k`` in reverse is

    y'  = y_{k+1} - F(t_{k+1}, y_{k+1}) v / 2,          a' = a_{k+1} + (a_{k+1}^T d[F(t_{k+1}, y) v]/dy) / 2,
    y_k = y_{k+1} - F(t', y') v',                       a_k = a_{k+1} + a'^T d[F(t', y') v']/dy,
    a_theta += a'^T d[F(t', y') v']/dtheta             (the first stage's theta-VJP only feeds a discarded a_theta')

with ``y`` reset to the stored forward value and ``a`` incremented by the incoming gradient at each observation
time, as torchsde does. The gradients are approximate (those of the continuous adjoint, not of the forward
discretisation); memory is O(1) in steps beyond the outputs and controls. Per step: forward 2 evaluations,
backward 2 re-evaluations + 2 VJPs (the first one to the state only). CDE controls: ``v = dt dX/dt(t_{k+1})``
(left piece) at the first reverse stage, ``v' = dt dX/dt(t')``; X gets its gradient through ``v'`` (torchsde's
coefficient VJP, likewise discarded at the first stage).

``adjoint=True`` with ``fused``: sdegan's ``GeneratorSDE`` and the CDE fields of ``mlp.cde_mlp`` go through
``FusedMLP`` with hand-written VJPs, parameter gradients summed once at the end (no double backward). Other
fields: the same adjoint with ``torch.autograd.grad`` per stage (``midpoint_generic``). ``adjoint=False``: plain
autograd through the forward loop, i.e. the exact gradient of the discretisation (memory O(steps); double backward
works there).
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.cde import _field as _cde_field
from neuralsde.fast.fused import _Contract, _rows, sde_controls, transpose_contract
from neuralsde.fast.grids import checked_grid, knot_grid, shape_checked
from neuralsde.fast.midpoint_generic import (
    _GenericAdjoint,
    _IndexedAdjoint,
    _integrate,
    adjoint_slope_times,
    evaluation_times,
    mid_times,
)
from neuralsde.fast.once import first_order
from neuralsde.fast.probe import fused_field
from neuralsde.fast.scratch import scratch
from neuralsde.fast.slopes import path_slopes

# ---------------------------------------------------------------------------------- fused (hand-written VJPs)

class _FusedMidpointAdjoint(torch.autograd.Function):
    """Midpoint with the continuous adjoint through a ``FusedMLP`` whose output ``(B, C, H)`` acts on a control.

    Controls ``(N, B, C)``: ``ca`` forward stage 0, ``cb`` forward stage 1 and reverse stage 2, ``cc`` reverse
    stage 1 (SDE: all ``[dt, dW_k]``, ``cb``/``cc`` None; CDE: ``dt`` times the slope at ``t_k``, ``t'``,
    ``t_{k+1}``). ``mlp``'s prepared times: ``2k`` / ``2k + 1`` forward stages, ``2N + k`` ``t_{k+1}``,
    ``3N + k`` the reverse midpoint time. The forward keeps nothing per step. Each stage is one evaluation, one
    contraction and one addition (backward: plus one outer product and one VJP), written as the reversible
    Heun path's are, so that the two compare like for like.
    """

    @staticmethod
    def forward(ctx, mlp, obs, keep, on_backward, ca, cb, cc, y0, *params):
        n = ca.size(0)
        ra, rb = _rows(0.5 * ca), _rows(ca if cb is None else cb)
        step = _Contract(mlp, y0.size(0), y0)
        is_obs = set(obs)
        y = y0.detach()
        ys = [y]
        evaluate = mlp.evaluator()
        for k in range(n):
            y_mid = step(y, ra[k], evaluate(y, 2 * k))
            y = step(y, rb[k], evaluate(y_mid, 2 * k + 1))
            if k + 1 in is_obs:
                ys.append(y)
        ys = torch.stack(ys)
        ctx.mlp, ctx.obs, ctx.keep, ctx.on_backward = mlp, obs, keep, on_backward
        ctx.save_for_backward(ys, ca, cb, cc)
        return ys

    @staticmethod
    @first_order
    def backward(ctx, grad_ys):
        ys, ca, cb, cc = ctx.saved_tensors
        mlp = ctx.mlp
        n, batch = ca.size(0), ys.size(1)
        b = ca if cb is None else cb
        rc = _rows(0.5 * (ca if cc is None else cc))
        rb = _rows(b)  # (B, C, 1) each: also the factors of the field's cotangents (outer products with a)
        step = _Contract(mlp, batch, ys)
        need_b = cb is not None and ctx.needs_input_grad[5]
        if need_b:
            ub = ys.new_empty(n, batch, b.size(-1))  # F(y')^T a', in processing order (k descending)
        obs_at = {k: i for i, k in enumerate(ctx.obs)}
        mlp.start_records(batch, ys, n)
        size, cache = mlp.rec.size, mlp.rec.cache
        hid = ys.size(-1)
        a_mids = scratch("mid.a_mid", (size, batch, hid), ys)  # a' of the chunk's steps
        a_mid_at, a_mid_v = a_mids.unbind(0), a_mids.unsqueeze(2).unbind(0)
        a_buf = scratch("mid.a", (2, batch, hid), ys)  # a, ping-pong
        a_at, a_v = a_buf.unbind(0), a_buf.unsqueeze(2).unbind(0)
        cot = ys.new_empty(batch, mlp.channels, hid)
        record, vjp = mlp.kernels()
        y = ys[-1]
        a_at[0].copy_(grad_ys[-1])
        p = 0  # a lives in a_at[p]
        for r0 in range(0, n, size):
            m = min(size, n - r0)
            for i in range(m):
                k = n - 1 - r0 - i
                S = record(y, 2 * n + k, cache)  # at t_{k+1}; its VJP goes to the state only
                y_mid = step(y, rc[k], S, alpha=-1.0, out=mlp.z_slot(i))
                vjp(torch.mul(rc[k], a_v[p], out=cot), a_at[p], slot=cache, out=a_mid_at[i])  # a'
                S = record(y_mid, 3 * n + k, i)  # at t'
                y = step(y, rb[k], S, alpha=-1.0)
                a = vjp(torch.mul(rb[k], a_mid_v[i], out=cot), a_at[p], slot=i, out=a_at[1 - p])
                p = 1 - p
                if k in obs_at:
                    y = ys[obs_at[k]]
                    a.add_(grad_ys[obs_at[k]])
            if need_b:  # one product and one sum per chunk instead of per step
                F = mlp.rec.out[:m].view(m * batch, mlp.channels, hid)
                transpose_contract(F, a_mids[:m].view(m * batch, hid), ub[r0:r0 + m].view(m * batch, -1))
            mlp.flush(m)
        a = a_at[p].clone()
        g_b = ub.flip(0) if need_b else None
        grads = [g if k else None for g, k in zip(mlp.param_grads(), ctx.keep, strict=True)]
        if ctx.on_backward is not None:
            ctx.on_backward()
        return (None, None, None, None, None, g_b, None, a, *grads)


def _fused_sdeint(vf, y0, t_grid, obs, dt, dW, params):
    # probed at a half-step time (index 1), so that the time input is checked too
    fused = fused_field(vf, params, evaluation_times(t_grid), mid_times(t_grid)[0], 1, y0)
    if fused is None:
        return None
    n = len(t_grid) - 1
    vf.nfe += 2 * n  # two stages per step; the backward adds its two re-evaluations per step

    def on_backward():
        vf.nfe += 2 * n
    return _FusedMidpointAdjoint.apply(fused[0], obs, fused[1], on_backward, sde_controls(dW, dt), None, None, y0,
                                       *fused[0].params)


def _fused_cdeint(func, z0, t_grid, obs, dt, S, params):
    fused = fused_field(func, params, evaluation_times(t_grid), mid_times(t_grid)[0], 1, z0)
    if fused is None:
        return None
    n = len(t_grid) - 1
    V = S * dt  # one product for the three controls (rows as adjoint_slope_times)
    return _FusedMidpointAdjoint.apply(fused[0], obs, fused[1], None, V[:n].detach(), V[n + 1:],
                                       V[1:n + 1].detach(), z0, *fused[0].params)


# ------------------------------------------------------------------------------------------------- public

def midpoint_solve(field, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor | None = None,
                   params=(), adjoint: bool = True, diagonal: bool = False) -> torch.Tensor:
    """Generic midpoint solve of ``field(t, z, u) -> (f, g)`` (``u`` always None here; see ``reversible_heun.solve``)
    on the ``dt`` grid of ``ts``, with torchsde's continuous adjoint (``params``: the tensors to differentiate) or
    plain autograd. ``g`` ``(B, H, W)``, or ``(B, H)`` with ``diagonal`` (then dW ``(N, B, H)``). ys ``(T, B, H)``.
    A field with hand-written VJPs (``at``, ``local``, ``param_grads``, prepared at ``evaluation_times``; diagonal
    noise, adjoint mode) is solved by index instead."""
    t_grid, obs = checked_grid(ts, dt, y0, dW, diagonal=diagonal)
    field = shape_checked(field, y0, dW, diagonal)
    if not adjoint:
        return _integrate(field, y0, t_grid, obs, float(dt), dW, None, None)
    params = tuple(p for p in params if p.requires_grad)
    if hasattr(field, "local"):
        return _IndexedAdjoint.apply(field, t_grid, obs, float(dt), dW.detach(), y0, *params)
    return _GenericAdjoint.apply(field, t_grid, obs, float(dt), None if dW is None else dW.detach(), None, None,
                                 None, y0, *params)


def midpoint_sdeint(vector_field: nn.Module, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor,
                    adjoint: bool = True, adjoint_params=None, fused: bool = True) -> torch.Tensor:
    """Stratonovich SDE (general noise) by the midpoint method; equals torchsde's ``sdeint(method="midpoint")``.

    Arguments as ``fast_sdeint``. adjoint=True: torchsde's continuous midpoint adjoint (approximate gradients,
    equal to ``sdeint_adjoint(method="midpoint", adjoint_method="midpoint")``; no gradient to ``dW``, no double
    backward), fused for sdegan's ``GeneratorSDE`` when ``fused``. adjoint=False: plain autograd through the
    discretisation (exact gradients of the forward solve). Returns ys ``(T, B, H)``.
    """
    params = tuple(vector_field.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint and fused:
        t_grid, obs = checked_grid(ts, dt, y0, dW)
        ys = _fused_sdeint(vector_field, y0, t_grid, obs, float(dt), dW, params)
        if ys is not None:
            return ys
    return midpoint_solve(lambda t, y, u: vector_field.f_and_g(t, y), y0, ts, dt, dW, params, adjoint)


def midpoint_cdeint(func: nn.Module, z0: torch.Tensor, X_values: torch.Tensor, ts: torch.Tensor | None = None,
                    dt: float = 1.0, adjoint: bool = True, adjoint_params=None, fused: bool = True,
                    interpolation: str = "linear") -> torch.Tensor:
    """``dz = func(t, z) dX`` by the midpoint method; equals ``torchcde.cdeint(..., backend='torchsde',
    method='midpoint')`` on ``LinearInterpolation(X_values)`` (or the Hermite cubic, ``interpolation="hermite"``).
    Arguments and layout as ``fast_cdeint``;
    gradients (to func's parameters, z0 and X_values) as ``midpoint_sdeint``: adjoint=True torchcde's
    ``adjoint=True`` (continuous adjoint, X_values among its ``adjoint_params``), adjoint=False exact."""
    t_grid, obs = knot_grid(ts, dt, X_values)
    field = _cde_field(func)
    if not adjoint:
        # two sets, both differentiated: one call would sum X_values' gradient in another order (last-bit changes)
        U = path_slopes(X_values, t_grid[:-1], interpolation)
        U_mid = path_slopes(X_values, mid_times(t_grid), interpolation)
        return _integrate(field, z0, t_grid, obs, float(dt), None, U, U_mid)
    n = len(t_grid) - 1
    S = path_slopes(X_values, adjoint_slope_times(t_grid), interpolation)
    params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if fused:
        zs = _fused_cdeint(func, z0, t_grid, obs, float(dt), S, params)
        if zs is not None:
            return zs
    params = tuple(p for p in params if p.requires_grad)
    return _GenericAdjoint.apply(field, t_grid, obs, float(dt), None, S[:n].detach(), S[n + 1:],
                                 S[1:n + 1].detach(), z0, *params)
