"""Reversible Heun and its exact adjoint for fields linear in a control, evaluated by a ``FusedMLP``.

The field's output ``F(t_k, z)`` ``(B, C, H)`` acts on a control ``(B, C)``: for the generator SDE the step
increments ``v_k = [dt, dW_k]`` (drift and diffusion in one contraction); for the CDE ``w_k = dt * dX/dt(t_k)``,
tied to grid points. With ``A_k`` / ``B_k`` the control of ``F_k`` / ``F_{k+1}`` in step ``k``
(SDE: ``v_k`` / ``v_k``; CDE: ``w_k`` / ``w_{k+1}``), torchsde's reversible Heun reads

    z_{k+1} = 2 y_k - z_k + F_k A_k,    y_{k+1} = y_k + (F_k A_k + F_{k+1} B_k) / 2.

Eliminating ``y`` gives a leapfrog in ``z`` alone (same values, up to rounding):

    z_1 = z_0 + F_0 c_0,    z_{j+1} = z_{j-1} + F_j c_j,    y_j = (z_j + z_{j-1} + F_j B_{j-1}) / 2,

with ``z_0 = y_0``, ``c_0 = A_0`` and ``c_j = B_{j-1} + A_j``. A step is then one field evaluation, one broadcast
product and one GEMM (``_Stepper``); the outputs are formed a chunk at a time (``_Outputs``). The backward pass
reconstructs ``z_{j-1} = z_{j+1} - F_j c_j`` and takes one hand-written VJP. Per step that is about half of
midpoint's work (measured: ``make bench``, row 8).
"""
from __future__ import annotations

import warnings

import torch

from neuralsde.fast.mlp import FusedMLP, cde_mlp, chunk_size, generator_mlp
from neuralsde.fast.scratch import scratch


def _leapfrog_controls(ctrl: torch.Tensor, per_point: bool, obs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_j`` ``(N + 1, B, C)`` (zero at ``N``) and ``B_{j-1}`` at the observed ``j >= 1`` ``(len(obs) - 1, B, C)``."""
    a, b = (ctrl[:-1], ctrl[1:]) if per_point else (ctrl, ctrl)
    c = torch.cat([a, torch.zeros_like(a[:1])])
    c[1:-1] += b[:-1]
    return c, b[torch.as_tensor(obs[1:], device=ctrl.device) - 1]


def _rows(c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Controls ``(M, B, C)`` as ``M`` views ``(B, C, 1)`` that broadcast against a field ``(B, C, H)``."""
    return c.unsqueeze(-1).unbind(0)


class _Stepper:
    """``z + alpha F_j c_j`` as one broadcast product and one GEMM (``q`` sums the channels): at these sizes
    faster on CPU than ``bmm``, ``addcmul`` or a sum over the channel dimension."""

    def __init__(self, mlp: FusedMLP, batch: int, like: torch.Tensor):
        self.q = mlp.q
        self.m = like.new_empty(batch, mlp.channels, mlp.hidden)
        self.m2 = self.m.view(batch, -1)

    def __call__(self, z, rows, j, F, alpha: float = 1.0, out=None):
        torch.mul(F, rows[j], out=self.m)
        return torch.addmm(z, self.m2, self.q, alpha=alpha, out=out)


class _Outputs:
    """``y_j = (z_j + z_{j-1} + F_j B_{j-1}) / 2`` at the observed ``j >= 1``, computed a chunk at a time from the
    ``F_j`` the solve writes into a small reused buffer (one pass over a cache-sized block, not per step)."""

    def __init__(self, mlp: FusedMLP, ys: torch.Tensor, b_obs: torch.Tensor):
        self.ys, self.b_obs = ys, b_obs.unsqueeze(-1)  # (T - 1, B, C, 1)
        k = chunk_size(ys.size(1) * mlp.channels * mlp.hidden * ys.element_size(), ys.size(0) - 1, budget=2 ** 20)
        self.f = scratch("rh.f_obs", (k, ys.size(1), mlp.channels, mlp.hidden), ys)
        self.f_at = self.f.view(k, ys.size(1), -1).unbind(0)
        self.first, self.zs, self.zps = None, [], []

    def slot(self, i: int, z: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        """Where the field at observation ``i`` (``ys[i]``) goes."""
        if len(self.zs) == len(self.f_at):
            self.flush()
        if self.first is None:
            self.first = i
        self.zs.append(z)
        self.zps.append(z_prev)
        return self.f_at[len(self.zs) - 1]

    def flush(self) -> None:
        if self.first is None:
            return
        m, i0 = len(self.zs), self.first - 1  # rows of b_obs; ys rows i0 + 1 ...
        f = self.f[:m].mul_(self.b_obs[i0:i0 + m])
        out = self.ys[i0 + 1:i0 + 1 + m]
        torch.add(torch.stack(self.zs), torch.stack(self.zps), out=out)
        for ch in range(f.size(2)):  # sum over the channels: cheaper than sum(2) on strided memory
            out.add_(f[:, :, ch])
        out.mul_(0.5)
        self.first, self.zs, self.zps = None, [], []


class _FusedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mlp: FusedMLP, obs, per_point, keep, ctrl, y0, *params):
        # ctrl: CDE (per_point) w (N + 1, B, C); SDE v (N, B, C).
        c, b_obs = _leapfrog_controls(ctrl, per_point, obs)
        rows = _rows(c)
        n, batch = c.size(0) - 1, y0.size(0)
        step = _Stepper(mlp, batch, y0)
        ys = y0.new_empty(len(obs), *y0.shape)
        ys[0] = y0
        outputs = _Outputs(mlp, ys, b_obs)
        z_prev = z = y0.detach()
        nxt = 1  # index of the next observation
        for j in range(n + 1):
            if nxt < len(obs) and obs[nxt] == j:
                S, _ = mlp(z, j, outputs.slot(nxt, z, z_prev))
                nxt += 1
            else:
                S, _ = mlp(z, j)
            if j < n:
                z_prev, z = z, step(z_prev, rows, j, S)
        outputs.flush()
        ctx.mlp, ctx.obs, ctx.per_point, ctx.keep = mlp, obs, per_point, keep
        ctx.save_for_backward(ys, z, z_prev, c, b_obs, ctrl)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        ys, z, z_prev, c, b_obs, ctrl = ctx.saved_tensors
        mlp, obs = ctx.mlp, ctx.obs
        n, batch = c.size(0) - 1, z.size(0)
        rows = _rows(c)  # also the factors of the cotangent c_j a_{j+1} of F_j through z_{j+1}
        step = _Stepper(mlp, batch, ys)
        need_ctrl = ctx.per_point and ctx.needs_input_grad[4]
        # Through y_j (j >= 1): F_j gets the cotangent B_{j-1} gy_j / 2, and z_j, z_{j-1} get gy_j / 2.
        half = torch.mul(grad_ys, 0.5, out=scratch("rh.half", grad_ys.shape, grad_ys))
        # In-loop products are cheaper than one doubly-broadcast product over all steps.
        b_at, hv = b_obs.unsqueeze(-1).unbind(0), half.unsqueeze(2).unbind(0)  # (B, C, 1), (B, 1, H)
        pre = [None] * (n + 1)  # (B_{j-1}, gy_j / 2) at observed j >= 1
        extra = [None] * (n + 1)  # (gy_j + gy_{j+1}) / 2
        if len(obs) == n + 1:
            pre[1:] = zip(b_at, hv[1:], strict=True)
            gy2 = torch.add(half[:-1], half[1:], out=scratch("rh.gy2", half[:-1].shape, half))
            extra[:-1], extra[-1] = gy2.unbind(0), half[-1]
        else:
            for i, j in enumerate(obs):
                if j:
                    pre[j] = (b_at[i - 1], hv[i])
                for jj in (j, j - 1):
                    if jj >= 0:
                        extra[jj] = half[i] if extra[jj] is None else extra[jj] + half[i]
        at = {j: i for i, j in enumerate(obs[1:])}
        if need_ctrl:
            ua = ys.new_zeros(n + 1, batch, c.size(-1))  # F_j^T a_{j+1}
            uy = []  # F_j^T gy_j / 2 at observed j >= 1, last first
        mlp.start_records(batch, ys, n + 1)
        cot = ys.new_empty(batch, mlp.channels, mlp.hidden)
        x1 = x2 = x1v = None  # a_{j+1}, a_{j+2}; x1v = x1 as (B, 1, H)
        z_next, s = None, mlp.slot()
        for j in range(n, -1, -1):
            S = mlp.record(ys[0] if j == 0 else z, j, s)
            p = pre[j]
            if x1 is None:
                g = torch.mul(p[0], p[1], out=cot)
            else:
                g = torch.mul(rows[j], x1v, out=cot)
                if p is not None:
                    g.addcmul_(p[0], p[1])
            acc, e = x2, extra[j]
            if e is not None:
                acc = e if acc is None else acc + e
            x = mlp.vjp(g, acc, slot=s)
            if need_ctrl:
                if j < n:
                    torch.sum(S * x1v, 2, out=ua[j])
                if j in at:
                    hh = half[at[j] + 1]
                    uy.append((S * hh.unsqueeze(1)).sum(2))
            if j == n:
                z_next, z = z, z_prev
                s = mlp.slot()
            elif j >= 2:  # z_{j-1} = z_{j+1} - F_j c_j, into the next record slot
                s_next = mlp.slot()
                z_next, z = z, step(z_next, rows, j, S, alpha=-1.0, out=mlp.z_slot(s_next))
                s = s_next
            elif j == 1:
                s = mlp.slot()
            x2, x1, x1v = x1, x, x.unsqueeze(1)
        grad_y0 = x1 + x2 + half[0]  # z_0 = y_0 also feeds z_1 directly, and is y_0 itself
        grad_ctrl = None
        if need_ctrl:
            # CDE: c_0 = w_0, c_j = 2 w_j (0 < j < N), c_N = 0, B_{j-1} = w_j
            grad_ctrl = ua.clone()
            grad_ctrl[1:-1] *= 2
            grad_ctrl[torch.as_tensor(obs[1:], device=ua.device)] += torch.stack(uy[::-1])
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
                  stacklevel=5)
    return False


PROBE_ROWS = 4  # the probe compares the fused net with the module on a few rows: it checks code, not data


def fused_field(module, params, times: torch.Tensor, probe_t: torch.Tensor, probe_k: int, z0: torch.Tensor):
    """``(FusedMLP, keep)`` standing in for sdegan's ``GeneratorSDE`` or ``DiscriminatorCDE`` ``module``, prepared
    for the evaluation ``times``; None (generic path) unless its structure, the adjoint ``params`` and a probe
    evaluation at ``probe_t`` (time index ``probe_k``) all agree."""
    sde = hasattr(module, "f_and_g")
    mlp = generator_mlp(module) if sde else cde_mlp(module)
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((times * module.time_scale).to(z0.dtype))
    z = z0.detach()[:PROBE_ROWS]
    with torch.no_grad():  # guards against the module's forward changing under us
        if sde:
            nfe = module.nfe
            f, g = module.f_and_g(probe_t, z)
            module.nfe = nfe  # callers count the solve's evaluations
            ref, what = torch.cat([f.unsqueeze(1), g.permute(0, 2, 1)], 1), "f_and_g"
        else:
            ref, what = module(probe_t, z).transpose(1, 2), "DiscriminatorCDE.forward"
        if not _agrees(mlp(z, probe_k)[0], ref, what):
            return None
    return mlp, keep


def sde_controls(dW: torch.Tensor, dt: float) -> torch.Tensor:
    """``[dt, dW_k]`` ``(N, B, 1 + W)``: the control the fused generator field acts on."""
    return torch.cat([dW.new_full((*dW.shape[:2], 1), dt), dW.detach()], -1)


def fused_sdeint(vf, y0, t_grid, obs, dt, dW, params):
    """ys ``(T, B, H)`` via the fused path if ``vf`` is an sdegan ``GeneratorSDE`` of plain MLPs, else None."""
    # probed at t > 0, so that the time input is checked too
    fused = fused_field(vf, params, t_grid, t_grid[-1], -1, y0)
    if fused is None:
        return None
    vf.nfe += 2 * len(t_grid)  # forward and backward evaluations, as the generic path counts
    return _FusedAdjoint.apply(fused[0], obs, False, fused[1], sde_controls(dW, dt), y0, *fused[0].params)


def fused_cdeint(func, z0, t_grid, obs, dt, U, params):
    """zs ``(T, B, H)`` via the fused path if ``func`` is an sdegan ``DiscriminatorCDE``, else None."""
    fused = fused_field(func, params, t_grid, t_grid[-1], -1, z0)
    if fused is None:
        return None
    return _FusedAdjoint.apply(fused[0], obs, True, fused[1], U * dt, z0, *fused[0].params)
