"""Lean midpoint (torchsde's ``method="midpoint"``) for the Stratonovich SDE and the linear-interpolation CDE.

One step from ``t_k`` to ``t_{k+1} = t_k + dt``, ``t' = t_k + dt / 2``, same increment ``dW_k`` in both stages:

    y' = y_k + f(t_k, y_k) dt / 2 + g(t_k, y_k) dW_k / 2,    y_{k+1} = y_k + f(t', y') dt + g(t', y') dW_k.

For the CDE (torchcde: drift ``func(t, z) @ dX/dt(t)``, zero diffusion) ``dX/dt`` is taken as torchcde's
``LinearInterpolation.derivative`` does, from the piece *left* of ``t`` (``bucketize - 1``, clamped): at a knot
``t_k`` the piece ending there (piece 0 at t0), at ``t'`` the piece containing it.

Gradients: exact gradients of this discretisation (discretise-then-optimise), by backpropagating through the
loop. torchsde's midpoint "adjoint" solves the continuous adjoint SDE backwards and is only approximately
the gradient of the forward solve; it is not reproduced. Memory is O(steps) (every stage is kept), and there
are no re-evaluations in the backward pass: 2 field evaluations and 2 VJPs per step.

``adjoint=True`` (fused): sdegan's ``GeneratorSDE`` / ``DiscriminatorCDE`` go through ``FusedMLP`` with
hand-written VJPs, parameter gradients summed once at the end (no double backward). Any other field, or
``adjoint=False``, takes plain autograd through the field calls (double backward works there).
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.cde import _field as _cde_field
from neuralsde.fast.cde import knot_derivatives
from neuralsde.fast.fused import _agrees, _contract, _outer, _select
from neuralsde.fast.mlp import FusedMLP, cde_mlp, generator_mlp
from neuralsde.fast.reversible_heun import checked_grid, time_grid


def mid_times(t_grid: torch.Tensor) -> torch.Tensor:
    """``t_k + (t_{k+1} - t_k) / 2`` ``(N,)``, computed as torchsde's midpoint step does."""
    return t_grid[:-1] + 0.5 * (t_grid[1:] - t_grid[:-1])


def stage_times(t_grid: torch.Tensor) -> torch.Tensor:
    """Evaluation times in order ``t_0, t_0', t_1, t_1', ...`` ``(2N,)``: stage ``2k`` / ``2k + 1`` of step ``k``."""
    return torch.stack([t_grid[:-1], mid_times(t_grid)], 1).reshape(-1)


# ------------------------------------------------------------------------------------- generic (autograd)

def _integrate(field, y0, t_grid, obs, dt, dW, U, U_mid):
    """Midpoint recurrence on ``field(t, z, u) -> (f, g or None)``; autograd records whatever grad mode allows."""
    half_dt = 0.5 * dt
    t_mid = mid_times(t_grid)
    is_obs = set(obs)
    y, ys = y0, [y0]
    for k in range(len(t_grid) - 1):
        # Same operation order as torchsde's Midpoint.step (g_prod = bmm, as its batch_mvp).
        f, g = field(t_grid[k], y, None if U is None else U[k])
        y_mid = y + half_dt * f
        if g is not None:
            v = dW[k].unsqueeze(-1)
            y_mid = y_mid + 0.5 * torch.bmm(g, v).squeeze(-1)
        f1, g1 = field(t_mid[k], y_mid, None if U_mid is None else U_mid[k])
        y = y + dt * f1
        if g1 is not None:
            y = y + torch.bmm(g1, v).squeeze(-1)
        if k + 1 in is_obs:
            ys.append(y)
    return torch.stack(ys)


# ---------------------------------------------------------------------------------- fused (hand-written VJPs)

def _F(cache, like):
    # The stage's output (B, C, H) from its cache (the MLP's last activation, (B, C * H)).
    return cache[4].view(like.size(0), -1, like.size(1))


class _FusedMidpoint(torch.autograd.Function):
    """Midpoint through a ``FusedMLP`` whose output ``(B, C, H)`` acts on a control ``(B, C)``.

    SDE: both stages of step k act on ``v_k = [dt, dW_k]`` (``w_mid`` None). CDE: stage ``2k`` on
    ``w_k = dt * dX/dt(t_k)``, stage ``2k + 1`` on ``w'_k = dt * dX/dt(t_k')``. Stage ``j`` is evaluated at
    ``mlp``'s prepared time ``j``. The forward keeps every stage's cache; the backward takes their VJPs.
    """

    @staticmethod
    def forward(ctx, mlp: FusedMLP, obs, keep, w, w_mid, y0, *params):
        n = w.size(0)
        a = w.unsqueeze(-1)
        b = a if w_mid is None else w_mid.unsqueeze(-1)
        is_obs = set(obs)
        y = y0.detach()
        ys, caches = [y], []
        for k in range(n):
            F, c0 = mlp(y, 2 * k)
            y_mid = torch.add(y, _contract(F, a[k]), alpha=0.5)
            F, c1 = mlp(y_mid, 2 * k + 1)
            y = torch.add(y, _contract(F, b[k]))
            caches.append((c0, c1))
            if k + 1 in is_obs:
                ys.append(y)
        ctx.mlp, ctx.obs, ctx.keep, ctx.caches = mlp, obs, keep, caches
        ctx.save_for_backward(w, w_mid)
        return torch.stack(ys)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        w, w_mid = ctx.saved_tensors
        mlp, caches = ctx.mlp, ctx.caches
        n = w.size(0)
        a = w.unsqueeze(-1)
        b = a if w_mid is None else w_mid.unsqueeze(-1)
        # The SDE's control [dt, dW] is built from a detached dW: no gradient to dW (as reversible Heun's path).
        need_w, need_mid = ctx.needs_input_grad[3], w_mid is not None and ctx.needs_input_grad[4]
        g_w = torch.empty_like(w) if need_w else None
        g_mid = torch.empty_like(w_mid) if need_mid else None
        obs_at = {k: i for i, k in enumerate(ctx.obs)}
        mlp.start_records()
        a_y = grad_ys[-1]
        for k in range(n - 1, -1, -1):
            c0, c1 = caches[k]
            # y_{k+1} = y_k + F(y') b_k: cotangent a_y reaches F(y') and y_k directly.
            if need_mid:
                g_mid[k] = torch.bmm(_F(c1, a_y), a_y.unsqueeze(2)).squeeze(2)
            a_mid = mlp.vjp(_outer(b[k], a_y), c1, a_y, beta=0.0)
            # y' = y_k + F(y_k) a_k / 2.
            h = 0.5 * a_mid
            if need_w:
                g_w[k] = torch.bmm(_F(c0, h), h.unsqueeze(2)).squeeze(2)
            a_y = mlp.vjp(_outer(a[k], h), c0, a_y + a_mid)
            if k in obs_at:
                a_y = a_y + grad_ys[obs_at[k]]
        grads = [g if k else None for g, k in zip(mlp.param_grads(), ctx.keep, strict=True)]
        return (None, None, None, g_w, g_mid, a_y, *grads)


def _fused_sdeint(vf, y0, t_grid, obs, dt, dW, params):
    mlp = generator_mlp(vf)
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((stage_times(t_grid) * vf.time_scale).to(y0.dtype))
    with torch.no_grad():  # guards against GeneratorSDE.f_and_g changing under us (one extra evaluation)
        nfe = vf.nfe
        f, g = vf.f_and_g(mid_times(t_grid)[0], y0)  # at a half-step time, so that the time input is checked too
        vf.nfe = nfe + 2 * (len(t_grid) - 1)  # two stages per step; the backward re-evaluates nothing
        if not _agrees(mlp(y0.detach(), 1)[0], torch.cat([f.unsqueeze(1), g.permute(0, 2, 1)], 1), "f_and_g"):
            return None
    v = torch.cat([dW.new_full((*dW.shape[:2], 1), dt), dW.detach()], -1)  # [dt, dW_k]: (N, B, 1 + W)
    return _FusedMidpoint.apply(mlp, obs, keep, v, None, y0, *mlp.params)


def _fused_cdeint(func, z0, t_grid, obs, dt, U, U_mid, params):
    mlp = cde_mlp(func)
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((stage_times(t_grid) * func.time_scale).to(z0.dtype))
    with torch.no_grad():
        ref = func(mid_times(t_grid)[0], z0).transpose(1, 2)
        if not _agrees(mlp(z0.detach(), 1)[0], ref, "DiscriminatorCDE.forward"):
            return None
    return _FusedMidpoint.apply(mlp, obs, keep, U * dt, U_mid * dt, z0, *mlp.params)


# ------------------------------------------------------------------------------------------------- public

def midpoint_sdeint(vector_field: nn.Module, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor,
                    adjoint: bool = True, adjoint_params=None, fused: bool = True) -> torch.Tensor:
    """Stratonovich SDE (general noise) by the midpoint method; equals torchsde's ``sdeint(method="midpoint")``.

    Arguments as ``fast_sdeint``. Gradients are the exact gradients of the discretisation in both modes
    (direct backpropagation, memory O(steps)), not torchsde's approximate continuous adjoint.
    adjoint=True with ``fused``: sdegan's ``GeneratorSDE`` via hand-written VJPs (no gradient to ``dW``, no
    double backward); otherwise plain autograd through ``vector_field.f_and_g``.
    Returns ys ``(T, B, H)``.
    """
    t_grid, obs = checked_grid(ts, dt, y0, dW)
    params = tuple(vector_field.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint and fused:
        ys = _fused_sdeint(vector_field, y0, t_grid, obs, float(dt), dW, params)
        if ys is not None:
            return ys
    return _integrate(lambda t, y, u: vector_field.f_and_g(t, y), y0, t_grid, obs, float(dt), dW, None, None)


def piece_slopes(X_values: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """``dX/dt`` at each of ``times`` ``(M,)`` as torchcde's LinearInterpolation on knots ``0..L-1``: ``(M, B, C)``."""
    length = X_values.size(1)
    knots = torch.linspace(0, length - 1, length, dtype=X_values.dtype, device=X_values.device)
    piece = torch.bucketize(times.to(X_values.dtype), knots).sub(1).clamp(0, length - 2)
    return knot_derivatives(X_values, knots).transpose(0, 1)[piece]


def midpoint_cdeint(func: nn.Module, z0: torch.Tensor, X_values: torch.Tensor, ts: torch.Tensor | None = None,
                    dt: float = 1.0, adjoint: bool = True, adjoint_params=None, fused: bool = True) -> torch.Tensor:
    """``dz = func(t, z) dX`` by the midpoint method; equals ``torchcde.cdeint(..., backend='torchsde',
    method='midpoint')`` on ``LinearInterpolation(X_values)``. Arguments and layout as ``fast_cdeint``;
    gradients (to func's parameters, z0 and X_values) as ``midpoint_sdeint``."""
    if X_values.dim() != 3 or X_values.size(1) < 2:
        raise ValueError(f"X_values must have shape (batch, length >= 2, channels), got {tuple(X_values.shape)}")
    length = X_values.size(1)
    if ts is None:
        ts = torch.tensor([0.0, length - 1.0], dtype=X_values.dtype, device=X_values.device)
    if float(ts[0]) < 0 or float(ts[-1]) > length - 1:
        raise ValueError(f"ts must lie within the knots [0, {length - 1}], got [{float(ts[0])}, {float(ts[-1])}]")
    t_grid, obs = time_grid(ts, dt)
    U, U_mid = piece_slopes(X_values, t_grid[:-1]), piece_slopes(X_values, mid_times(t_grid))
    params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint and fused:
        zs = _fused_cdeint(func, z0, t_grid, obs, float(dt), U, U_mid, params)
        if zs is not None:
            return zs
    return _integrate(_cde_field(func), z0, t_grid, obs, float(dt), None, U, U_mid)
