"""Reversible Heun and its exact adjoint for fields linear in a control, evaluated by a ``FusedMLP``.

The field's output ``F(t_k, z)`` ``(B, C, H)`` acts on a control ``(B, C)``: for the generator SDE the step
increments ``v_k = [dt, dW_k]`` (drift and diffusion in one contraction); for the CDE ``w_k = dt * dX/dt(t_k)``,
tied to grid points. With ``A_k`` / ``B_k`` the control of ``F_k`` / ``F_{k+1}`` in step ``k``
(SDE: ``v_k`` / ``v_k``; CDE: ``w_k`` / ``w_{k+1}``), reversible Heun reads

    z_{k+1} = 2 y_k - z_k + F_k A_k,    y_{k+1} = y_k + (F_k A_k + F_{k+1} B_k) / 2,

which is torchsde's recurrence (equal up to rounding). The backward mirrors ``reversible_heun._ReversibleHeunAdjoint``
but takes each local VJP by hand (``FusedMLP.vjp``) and sums parameter gradients once at the end.
"""
from __future__ import annotations

import warnings

import torch

from neuralsde.fast.mlp import FusedMLP, cde_mlp, generator_mlp

# Controls are kept as (B, C, 1) slices: a broadcast product and a sum over C beat bmm on CPU at these sizes.


def _contract(F: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # sum_c v[:, c] * F[:, c, :]: (B, C, H), (B, C, 1) -> (B, H)
    return torch.mul(F, v).sum(1)


def _outer(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # (B, C, 1), (B, H) -> (B, C, H)
    return v * a.unsqueeze(1)


class _FusedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mlp: FusedMLP, obs, per_point, keep, ctrl, y0, *params):
        # ctrl: CDE (per_point) w (N + 1, B, C); SDE v (N, B, C).
        n = ctrl.size(0) - (1 if per_point else 0)
        is_obs = set(obs)
        v = ctrl.unsqueeze(-1)
        y = z = y0.detach()
        F, _ = mlp(y, 0)
        p = _contract(F, v[0])
        ys = [y]
        for k in range(n):
            z1 = torch.add(p, y, alpha=2).sub_(z)  # 2 y - z + F_k A_k
            F, _ = mlp(z1, k + 1)
            q = _contract(F, v[k + 1] if per_point else v[k])
            y = torch.add(y, torch.add(p, q), alpha=0.5)
            z = z1
            if per_point:
                p = q
            elif k + 1 < n:
                p = _contract(F, v[k + 1])
            if k + 1 in is_obs:
                ys.append(y)
        ys = torch.stack(ys)
        ctx.mlp, ctx.obs, ctx.per_point, ctx.keep = mlp, obs, per_point, keep
        ctx.save_for_backward(ys, z, ctrl)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        ys, z, ctrl = ctx.saved_tensors
        mlp, per_point = ctx.mlp, ctx.per_point
        mlp.start_records()
        n = ctrl.size(0) - (1 if per_point else 0)
        obs_at = {k: i for i, k in enumerate(ctx.obs)}
        need_ctrl = per_point and ctx.needs_input_grad[4]
        ctrl = ctrl.unsqueeze(-1)
        half = None if per_point else 0.5 * ctrl
        g_ctrl = []
        a_y, a_z, s = grad_ys[-1], torch.zeros_like(z), None  # a_z is kept un-negated: beta=-1 in vjp
        y = ys[-1]
        F, cache = mlp(z, n)
        p = _contract(F, ctrl[n]) if per_point else None
        for k in range(n - 1, -1, -1):
            # Cotangent of F_{k+1}: (s_{k+1}) A_{k+1} + (a_y / 2) B_k.
            if per_point:
                c = a_y * 0.5 if s is None else torch.add(s, a_y, alpha=0.5)
                G = _outer(ctrl[k + 1], c)
                if need_ctrl:
                    g_ctrl.append(torch.bmm(F, c.unsqueeze(2)).squeeze(2))
                q = p
            else:
                G = _outer(half[k], a_y)
                if s is not None:
                    G.addcmul_(ctrl[k + 1], s.unsqueeze(1))
                q = _contract(F, ctrl[k])
            a_z = mlp.vjp(G, cache, a_z, beta=0.0 if k == n - 1 else -1.0)
            # Reconstruct step k backwards; at t0 torchsde differentiates at y0 itself, not the rebuilt z0.
            F, cache = mlp(torch.mul(y, 2).sub_(z).sub_(q) if k else ys[0], k)
            z = cache[1]
            p = _contract(F, ctrl[k])
            y = torch.sub(y, torch.add(q, p), alpha=0.5)
            s = torch.add(a_z, a_y, alpha=0.5)
            a_y = torch.add(a_y, a_z, alpha=2)
            if k in obs_at:
                y = ys[obs_at[k]]
                a_y = a_y + grad_ys[obs_at[k]]
        G = _outer(ctrl[0], s)  # F_0 enters only step 0's z and y updates
        if need_ctrl:
            g_ctrl.append(torch.bmm(F, s.unsqueeze(2)).squeeze(2))
        grad_y0 = a_y + mlp.vjp(G, cache, a_z, beta=-1.0)
        grad_ctrl = torch.stack(g_ctrl[::-1]) if need_ctrl else None
        grads = [g if k else None for g, k in zip(mlp.param_grads(), ctx.keep, strict=True)]
        return (None, None, None, None, grad_ctrl, grad_y0, *grads)


def _select(mlp: FusedMLP, params) -> list[bool] | None:
    """Which of ``mlp.params`` get gradients; None if ``params`` holds a tensor the fused path cannot see."""
    ids = {id(p) for p in params if p.requires_grad}
    own = {id(p) for p in mlp.params}
    if not ids <= own:
        return None
    return [id(p) in ids for p in mlp.params]


def _agrees(F0: torch.Tensor, ref: torch.Tensor, what: str) -> bool:
    tol = 1e3 * torch.finfo(ref.dtype).eps
    if torch.allclose(F0, ref, rtol=tol, atol=tol):
        return True
    warnings.warn(f"fused fast path disagrees with {what} on a probe; using the generic path", RuntimeWarning,
                  stacklevel=4)
    return False


def fused_sdeint(vf, y0, t_grid, obs, dt, dW, params):
    """ys ``(T, B, H)`` via the fused path if ``vf`` is an sdegan ``GeneratorSDE`` of plain MLPs, else None."""
    mlp = generator_mlp(vf)
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((t_grid * vf.time_scale).to(y0.dtype))
    with torch.no_grad():  # guards against GeneratorSDE.f_and_g changing under us (one extra evaluation)
        nfe = vf.nfe
        f, g = vf.f_and_g(t_grid[-1], y0)  # at t > 0, so that the time input is checked too
        vf.nfe = nfe + 2 * len(t_grid)  # forward and backward evaluations, as the generic path counts
        if not _agrees(mlp(y0.detach(), -1)[0], torch.cat([f.unsqueeze(1), g.permute(0, 2, 1)], 1), "f_and_g"):
            return None
    v = torch.cat([dW.new_full((*dW.shape[:2], 1), dt), dW.detach()], -1)  # [dt, dW_k]: (N, B, 1 + W)
    return _FusedAdjoint.apply(mlp, obs, False, keep, v, y0, *mlp.params)


def fused_cdeint(func, z0, t_grid, obs, dt, U, params):
    """zs ``(T, B, H)`` via the fused path if ``func`` is an sdegan ``DiscriminatorCDE``, else None."""
    mlp = cde_mlp(func)
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((t_grid * func.time_scale).to(z0.dtype))
    with torch.no_grad():
        ref = func(t_grid[-1], z0).transpose(1, 2)
        if not _agrees(mlp(z0.detach(), -1)[0], ref, "DiscriminatorCDE.forward"):
            return None
    return _FusedAdjoint.apply(mlp, obs, True, keep, U * dt, z0, *mlp.params)
