"""The midpoint recurrence and its continuous adjoint for generic fields (``neuralsde.fast.midpoint`` has the maths).

``_GenericAdjoint`` takes any ``field(t, z, u) -> (f, g or None)`` and differentiates each reverse stage with
``torch.autograd.grad``; ``_IndexedAdjoint`` takes a diagonal-noise field with hand-written VJPs indexed by
``evaluation_times`` (the latent SDE's). The fused path for the framework's MLP fields is in ``midpoint``.
"""
from __future__ import annotations

import torch

from neuralsde.fast.once import first_order


def mid_times(t_grid: torch.Tensor) -> torch.Tensor:
    """``t_k + (t_{k+1} - t_k) / 2`` ``(N,)``, computed as torchsde's midpoint step does."""
    return t_grid[:-1] + 0.5 * (t_grid[1:] - t_grid[:-1])


def reverse_mid_times(t_grid: torch.Tensor) -> torch.Tensor:
    """The forward time of the adjoint's second stage of step ``k`` ``(N,)``, as torchsde computes it in reverse
    time (``-(t0 + (t1 - t0) / 2)`` with ``t0 = -t_{k+1}``, ``t1 = -t_k``); equals ``mid_times`` on exact grids."""
    t0, t1 = -t_grid[1:], -t_grid[:-1]
    return -(t0 + 0.5 * (t1 - t0))


def stage_times(t_grid: torch.Tensor) -> torch.Tensor:
    """Evaluation times in order ``t_0, t_0', t_1, t_1', ...`` ``(2N,)``: stage ``2k`` / ``2k + 1`` of step ``k``."""
    return torch.stack([t_grid[:-1], mid_times(t_grid)], 1).reshape(-1)


def evaluation_times(t_grid: torch.Tensor) -> torch.Tensor:
    """Evaluation times in the order the fused and indexed midpoint adjoints index them: ``2k`` / ``2k + 1`` the
    forward stages of step ``k``, ``2N + k`` its end ``t_{k+1}``, ``3N + k`` the reverse midpoint time."""
    return torch.cat([stage_times(t_grid), t_grid[1:], reverse_mid_times(t_grid)])


def adjoint_slope_times(t_grid: torch.Tensor) -> torch.Tensor:
    """The times ``(2N + 1,)`` at which the adjoint CDE solve reads ``dX/dt``, so that one ``path_slopes`` call
    serves the forward and the backward: rows ``:N`` the forward's first stages (``t_k``), ``1:N + 1`` the reverse
    first stages (``t_{k+1}``), ``N + 1:`` both second stages (``reverse_mid_times``: torchsde's reverse-time
    arithmetic, equal to the forward's midpoints on the exact grids ``time_grid`` allows)."""
    return torch.cat([t_grid, reverse_mid_times(t_grid)])


# ------------------------------------------------------------------------------------- generic (autograd)

def _g_prod(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchsde's ``g_prod``: ``g`` ``(B, H, W)`` times ``v`` ``(B, W)`` (its ``batch_mvp``), or elementwise for a
    diagonal ``g`` ``(B, H)``."""
    return g * v if g.dim() == 2 else torch.bmm(g, v.unsqueeze(-1)).squeeze(-1)


def _integrate(field, y0, t_grid, obs, dt, dW, U, U_mid):
    """Midpoint recurrence on ``field(t, z, u) -> (f, g or None)``, or on a field with ``at(index, z)`` indexed as
    ``evaluation_times``; autograd records whatever grad mode allows."""
    half_dt = 0.5 * dt
    t_mid = mid_times(t_grid)
    if hasattr(field, "at"):
        first, second = (lambda k, y: field.at(2 * k, y)), (lambda k, y: field.at(2 * k + 1, y))
    else:
        first = lambda k, y: field(t_grid[k], y, None if U is None else U[k])  # noqa: E731
        second = lambda k, y: field(t_mid[k], y, None if U_mid is None else U_mid[k])  # noqa: E731
    is_obs = set(obs)
    y, ys = y0, [y0]
    for k in range(len(t_grid) - 1):
        # Same operation order as torchsde's Midpoint.step.
        f, g = first(k, y)
        y_mid = y + half_dt * f
        if g is not None:
            y_mid = y_mid + 0.5 * _g_prod(g, dW[k])
        f1, g1 = second(k, y_mid)
        y = y + dt * f1
        if g1 is not None:
            y = y + _g_prod(g1, dW[k])
        if k + 1 in is_obs:
            ys.append(y)
    return torch.stack(ys)


class _GenericAdjoint(torch.autograd.Function):
    """The continuous midpoint adjoint (module docstring) for any ``field(t, z, u)``, by autograd per stage."""

    @staticmethod
    def forward(ctx, field, t_grid, obs, dt, dW, U, U_mid, U_next, y0, *params):
        with torch.no_grad():
            ys = _integrate(field, y0.detach(), t_grid, obs, dt, dW, U, U_mid)
        ctx.field, ctx.obs, ctx.dt = field, obs, dt
        ctx.save_for_backward(ys, t_grid, dW, U_mid, U_next, *params)
        return ys

    @staticmethod
    @first_order
    def backward(ctx, grad_ys):
        ys, t_grid, dW, U_mid, U_next, *params = ctx.saved_tensors
        field, dt = ctx.field, ctx.dt
        need_u = U_mid is not None and ctx.needs_input_grad[6]
        n = len(t_grid) - 1
        t_rev = reverse_mid_times(t_grid)

        def inc(k, t, y, u):
            f, g = field(t, y, u)
            out = dt * f
            if g is not None:
                out = out + _g_prod(g, dW[k])
            return out

        obs_at = {k: i for i, k in enumerate(ctx.obs)}
        g_params = [torch.zeros_like(p) for p in params]
        g_u = torch.zeros_like(U_mid) if need_u else None
        y, a = ys[-1], grad_ys[-1]
        for k in range(n - 1, -1, -1):
            with torch.enable_grad():
                yr = y.detach().requires_grad_()
                i1 = inc(k, t_grid[k + 1], yr, None if U_next is None else U_next[k])
                (gy,) = torch.autograd.grad(i1, yr, a, allow_unused=True)
            a_mid = a if gy is None else a + 0.5 * gy
            with torch.enable_grad():
                ym = (y - 0.5 * i1.detach()).requires_grad_()
                u = None if U_mid is None else U_mid[k].detach().requires_grad_(need_u)
                i2 = inc(k, t_rev[k], ym, u)
                wrt = [ym, *params] + ([u] if need_u else [])
                gs = torch.autograd.grad(i2, wrt, a_mid, allow_unused=True)
            y = y - i2.detach()
            if gs[0] is not None:
                a = a + gs[0]
            for acc, g in zip(g_params, gs[1:1 + len(params)], strict=True):
                if g is not None:
                    acc += g
            if need_u and gs[-1] is not None:
                g_u[k] = gs[-1]
            if k in obs_at:
                y = ys[obs_at[k]]
                a = a + grad_ys[obs_at[k]]
        return (None, None, None, None, None, None, g_u, None, a, *g_params)


class _IndexedAdjoint(torch.autograd.Function):
    """The continuous midpoint adjoint (module docstring) for a diagonal-noise field with hand-written VJPs, by
    evaluation index (``evaluation_times``; ``reversible_heun``'s indexed-field protocol: ``at``, ``local``,
    ``param_grads``). The first reverse stage's local is not recorded: its VJP goes to the state only."""

    @staticmethod
    def forward(ctx, field, t_grid, obs, dt, dW, y0, *params):
        ys = _integrate(field, y0.detach(), t_grid, obs, dt, dW, None, None)
        ctx.field, ctx.obs, ctx.dt = field, obs, dt
        ctx.save_for_backward(ys, dW, *params)
        return ys

    @staticmethod
    @first_order
    def backward(ctx, grad_ys):
        ys, dW, *params = ctx.saved_tensors
        field, dt, n = ctx.field, ctx.dt, dW.size(0)
        obs_at = {k: i for i, k in enumerate(ctx.obs)}
        y, a = ys[-1], grad_ys[-1]
        for k in range(n - 1, -1, -1):  # the operation order of _GenericAdjoint.backward
            loc = field.local(2 * n + k, y, record=False)
            i1 = dt * loc.f + loc.gt * dW[k]
            a_mid = a + 0.5 * loc.vjp(a * dt, a * dW[k], params, False)[0]
            loc = field.local(3 * n + k, y - 0.5 * i1)
            i2 = dt * loc.f + loc.gt * dW[k]
            dz = loc.vjp(a_mid * dt, a_mid * dW[k], params, False)[0]
            y = y - i2
            a = a + dz
            if k in obs_at:
                y = ys[obs_at[k]]
                a = a + grad_ys[obs_at[k]]
        return (None, None, None, None, None, a, *field.param_grads(params))
