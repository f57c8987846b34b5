"""Lean reversible Heun solver (Kidger et al. 2021) with its exact, algebraically reversible adjoint.

Numerically identical to ``torchsde``'s ``reversible_heun`` / ``adjoint_reversible_heun`` pair on a
fixed grid whose step ``dt`` lands exactly on every observation time, but without torchsde's per-step
bookkeeping, Brownian queries or flattening of the augmented adjoint state.

The core works on a generic *field* ``field(t, z, u) -> (f, g)``: ``t`` a scalar tensor, ``z`` the
state ``(B, H)``, ``u`` an optional per-grid-point input (``U[k]``, differentiable, e.g. a CDE's control
derivative) or ``None``; ``f`` ``(B, H)``; ``g`` ``(B, H, W)`` (general noise), ``(B, H)`` (diagonal noise,
``W = H``) or ``None`` (no noise term). A field with hand-written VJPs instead provides, by grid index ``k``,
``at(k, z) -> (f, g)``, ``local(k, z)`` (an object with ``f``, ``gt`` and ``vjp`` as ``_Local``'s, returning no
parameter gradients) and ``param_grads(params)`` (what its VJPs accumulated), e.g. ``neuralsde.fast.latent``.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.grids import checked_grid, shape_checked
from neuralsde.fast.once import first_order

# Diffusions are kept noise-channel-first, (W, B, H) contiguous: with W ~ 3 innermost, bmm and broadcast
# products cost several times more on CPU. Noise increments are stored as (N, W, B, 1) to match.

def _wfirst(g: torch.Tensor) -> torch.Tensor:
    return g.permute(2, 0, 1).contiguous()


def _prod(gt: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
    # g @ v for gt (W, B, H), vt (W, B, 1) -> (B, H). Summed over W left to right, which is how
    # torchsde's bmm (batch_mvp) rounds on CPU.
    out = gt[0] * vt[0]
    for j in range(1, gt.size(0)):
        out = out + gt[j] * vt[j]
    return out


def _outer(a: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
    # Adjoint of _prod wrt g: a (B, H), vt (W, B, 1) -> (W, B, H).
    return a * vt


def _noise_first(dW: torch.Tensor | None) -> torch.Tensor | None:
    # (N, B, W) -> (N, W, B, 1).
    return None if dW is None else dW.permute(0, 2, 1).unsqueeze(-1).contiguous()


class _Noise:
    """How a diffusion meets its increments: general ``(B, H, W)`` (kept noise-channel-first, see above) or
    diagonal ``(B, H)`` (elementwise, as torchsde's diagonal ``g_prod``)."""

    def __init__(self, diagonal: bool):
        if diagonal:
            self.first = self.increments = lambda x: x
            self.prod = self.outer = torch.mul
            self.cotangent = lambda a_g: a_g
        else:
            self.first, self.increments, self.prod, self.outer = _wfirst, _noise_first, _prod, _outer
            self.cotangent = lambda a_g: a_g.permute(1, 2, 0)  # (W, B, H) -> (B, H, W)


_GENERAL, _DIAGONAL = _Noise(False), _Noise(True)


def _integrate(field, y0, t_grid, obs, dt, dW, U, noise: _Noise = _GENERAL):
    """Forward recurrence; records a graph only if grad mode is on. Returns ys ``(T, B, H)``, final (z, f, g)."""
    half_dt = 0.5 * dt
    is_obs = set(obs)
    _prod, _wfirst = noise.prod, noise.first
    dW = noise.increments(dW)
    at = field.at if hasattr(field, "at") else lambda k, z: field(t_grid[k], z, None if U is None else U[k])
    y = z = y0
    f, g = at(0, y0)
    g = None if g is None else _wfirst(g)
    ys = [y0]
    for k in range(len(t_grid) - 1):
        # Same operation order as torchsde's ReversibleHeun.step.
        z1 = 2 * y - z + f * dt
        if g is not None:
            z1 = z1 + _prod(g, dW[k])
        f1, g1 = at(k + 1, z1)
        g1 = None if g1 is None else _wfirst(g1)
        y1 = y + (f + f1) * half_dt
        if g is not None:
            y1 = y1 + _prod(g + g1, 0.5 * dW[k])
        y, z, f, g = y1, z1, f1, g1
        if k + 1 in is_obs:
            ys.append(y)
    return torch.stack(ys), (z, f, g)


class _Local:
    """One re-evaluation of the field with a graph, kept only until its VJP has been taken."""

    def __init__(self, field, t, z, u, need_u, noise: _Noise):
        self.z = z.detach().requires_grad_(True)
        self.u = None if u is None else u.detach().requires_grad_(need_u)
        self.noise = noise
        with torch.enable_grad():
            self.f, self.g = field(t, self.z, self.u)
        self.gt = None if self.g is None else noise.first(self.g.detach())

    def vjp(self, a_f, a_g, params, need_u):
        """Returns (dz, du or None, [dparam or None])."""
        outs, gouts = [self.f], [a_f]
        if self.g is not None:
            outs.append(self.g)
            gouts.append(self.noise.cotangent(a_g))
        keep = [i for i, o in enumerate(outs) if o.requires_grad]
        if not keep:
            return None, None, [None] * len(params)
        inputs = [self.z] + ([self.u] if need_u else []) + list(params)
        grads = torch.autograd.grad([outs[i] for i in keep], inputs, [gouts[i] for i in keep], allow_unused=True)
        du = grads[1] if need_u else None
        return grads[0], du, list(grads[1 + int(need_u):])


def _add(acc, x):
    return acc if x is None else (x if acc is None else acc + x)


def _accumulate(acc: list, grads: list) -> None:
    # One fused call for all parameters; elementwise, so rounding equals torchsde's seq_add.
    pairs = [(a, d) for a, d in zip(acc, grads, strict=True) if d is not None]
    if pairs:
        torch._foreach_add_([a for a, _ in pairs], [d for _, d in pairs])


class _ReversibleHeunAdjoint(torch.autograd.Function):
    """Forward without a graph; backward reconstructs each step algebraically and takes one local VJP."""

    @staticmethod
    def forward(ctx, field, noise, t_grid, obs, dt, dW, U, y0, *params):
        y0 = y0.detach()
        ys, (z, f, g) = _integrate(field, y0, t_grid, obs, dt, dW, U, noise)  # g: (W, B, H) or (B, H)
        ctx.field, ctx.noise, ctx.obs, ctx.dt = field, noise, obs, dt
        ctx.save_for_backward(ys, z, f, g, t_grid, dW, U, *params)
        return ys

    @staticmethod
    @first_order
    def backward(ctx, grad_ys):
        ys, z, f, g, t_grid, dW, U, *params = ctx.saved_tensors
        field, noise, obs, dt = ctx.field, ctx.noise, ctx.obs, ctx.dt
        _prod, _outer = noise.prod, noise.outer
        need_u = U is not None and ctx.needs_input_grad[6]
        half_dt = 0.5 * dt
        obs_at = {k: i for i, k in enumerate(obs)}
        n = len(t_grid) - 1

        grad_U = torch.zeros_like(U) if need_u else None
        own_grads = hasattr(field, "param_grads")
        grad_p = None if own_grads else [torch.zeros_like(p) for p in params]  # torchsde also starts from zeros
        dW = noise.increments(dW)
        half_dWs = None if dW is None else 0.5 * dW
        a_y = grad_ys[-1]
        a_z = torch.zeros_like(a_y)
        a_f = torch.zeros_like(a_y)
        a_g = None if g is None else torch.zeros_like(g)
        y = ys[-1]
        if hasattr(field, "local"):
            make_local = field.local
        else:
            def make_local(k, z):
                return _Local(field, t_grid[k], z, None if U is None else U[k], need_u, noise)
        local = make_local(n, z)
        for k in range(n - 1, -1, -1):
            # Mirrors torchsde's AdjointReversibleHeun.step from t_{k+1} back to t_k.
            a_y_half_dt = a_y * half_dt
            a_f = a_f + a_y_half_dt
            if g is not None:
                half_dW = half_dWs[k]
                a_y_half_dW = _outer(a_y, half_dW)
                a_g = a_g + a_y_half_dW
            dz, du, dp = local.vjp(a_f, a_g, params, need_u)
            a_z = _add(a_z, dz)
            if not own_grads:
                _accumulate(grad_p, dp)
            if du is not None:
                grad_U[k + 1] += du

            z_prev = 2 * y - z - f * dt
            if g is not None:
                z_prev = z_prev - _prod(g, dW[k])
            # At t0 torchsde differentiates f_and_g at the true y0, not the reconstructed z0.
            local = make_local(k, ys[0] if k == 0 else z_prev)
            f_prev = local.f.detach()
            g_prev = local.gt
            y_prev = y - (f + f_prev) * half_dt
            if g is not None:
                y_prev = y_prev - _prod(g + g_prev, half_dW)

            a_y = a_y + 2 * a_z
            a_f = a_y_half_dt + a_z * dt
            if g is not None:
                a_g = a_y_half_dW + _outer(a_z, dW[k])
            a_z = -a_z
            y, z, f, g = y_prev, z_prev, f_prev, g_prev
            if k in obs_at:
                # As torchsde: restore the stored output, add its incoming gradient.
                y = ys[obs_at[k]]
                a_y = a_y + grad_ys[obs_at[k]]

        # Initial extra state (f0, g0, z0 = y0) depends on y0 and the parameters.
        dz, du, dp = local.vjp(a_f, a_g, params, need_u)
        grad_y0 = _add(a_y + a_z, dz)
        if du is not None:
            grad_U[0] += du
        if own_grads:
            grad_p = field.param_grads(params)
        else:
            _accumulate(grad_p, dp)
        return (None, None, None, None, None, None, grad_U, grad_y0, *grad_p)


def solve(field, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor | None = None,
          U: torch.Tensor | None = None, params=(), adjoint: bool = True, diagonal: bool = False) -> torch.Tensor:
    """Generic reversible Heun solve of ``field`` (see module docstring) on the ``dt`` grid of ``ts``.

    y0 ``(B, H)``; ts ``(T,)``; dW ``(N, B, W)`` (diagonal noise: ``W = H``) or None; U ``(N + 1, ...)`` or
    None, with ``N`` the number of steps. ``params``: tensors the field closes over that need gradients
    (adjoint mode only). ``diagonal``: the field's diffusion is ``(B, H)`` and acts elementwise.
    Returns ys ``(T, B, H)``.
    """
    t_grid, obs = checked_grid(ts, dt, y0, dW, U, diagonal)
    noise = _DIAGONAL if diagonal else _GENERAL
    field = shape_checked(field, y0, dW, diagonal)
    if not adjoint:
        return _integrate(field, y0, t_grid, obs, float(dt), dW, U, noise)[0]
    params = tuple(p for p in params if p.requires_grad)
    return _ReversibleHeunAdjoint.apply(field, noise, t_grid, obs, float(dt), dW, U, y0, *params)


def fast_sdeint(vector_field: nn.Module, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor,
                adjoint: bool = True, adjoint_params=None, fused: bool = True) -> torch.Tensor:
    """Stratonovich SDE (general noise) by reversible Heun; equals torchsde's ``reversible_heun``.

    vector_field: module with ``f_and_g(t, y) -> (drift (B, H), diffusion (B, H, W))``, ``t`` a scalar tensor.
    y0 ``(B, H)``; ts ``(T,)`` on the ``dt`` grid; dW ``(N, B, W)`` increments, ``N = (ts[-1] - ts[0]) / dt``.
    adjoint: exact reversible adjoint (keeps only ys, dW and the final state; no double backward) or plain
    autograd (supports double backward, e.g. for a gradient penalty).
    adjoint_params: tensors to differentiate in adjoint mode (default: ``vector_field.parameters()``).
    fused: in adjoint mode, solve sdegan's ``GeneratorSDE`` with hand-written VJPs (``neuralsde.fast.fused``);
    other fields, or ``fused=False``, take the generic autograd path.
    Returns ys ``(T, B, H)`` (torchsde layout). No gradient flows to ``dW`` in adjoint mode.
    """
    params = tuple(vector_field.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint and fused:
        from neuralsde.fast.fused import fused_sdeint
        t_grid, obs = checked_grid(ts, dt, y0, dW)
        ys = fused_sdeint(vector_field, y0, t_grid, obs, float(dt), dW, params)
        if ys is not None:
            return ys
    return solve(lambda t, y, u: vector_field.f_and_g(t, y), y0, ts, dt, dW=dW, params=params, adjoint=adjoint)


def method_solve(method: str):
    """The generic solve of ``method``: ``solve`` (reversible Heun) or ``midpoint.midpoint_solve``, called alike
    as ``(field, y0, ts, dt, dW=, params=, adjoint=, diagonal=)``."""
    if method == "reversible_heun":
        return solve
    if method == "midpoint":
        from neuralsde.fast.midpoint import midpoint_solve
        return midpoint_solve
    raise ValueError(f"method={method!r}: the fast backend solves reversible_heun or midpoint")


def fast_sdeint_diagonal(sde: nn.Module, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor,
                         adjoint: bool = True, adjoint_params=None, method: str = "reversible_heun") -> torch.Tensor:
    """Stratonovich diagonal-noise ``sde`` (``f``, ``g``, as torchsde's) by ``method`` (reversible Heun or
    midpoint), generic path: ys ``(T, B, d)``; dW ``(N, B, d)``. With the latent SDE's KL term:
    ``neuralsde.fast.logqp``."""
    params = tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params)
    return method_solve(method)(lambda t, y, u: (sde.f(t, y), sde.g(t, y)), y0, ts, dt, dW=dW, params=params,
                                adjoint=adjoint, diagonal=True)
