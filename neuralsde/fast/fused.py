"""Reversible Heun and its exact adjoint for fields linear in a control, evaluated by a ``FusedMLP``.

The field's output ``F(t_k, z)`` ``(B, C, H)`` acts on a control ``(B, C)``: for the generator SDE the step
increments ``v_k = [dt, dW_k]`` (drift and diffusion in one contraction); for the CDE ``w_k = dt * dX/dt(t_k)``,
tied to grid points. With ``A_k`` / ``B_k`` the control of ``F_k`` / ``F_{k+1}`` in step ``k``
(SDE: ``v_k`` / ``v_k``; CDE: ``w_k`` / ``w_{k+1}``), torchsde's reversible Heun reads

    z_{k+1} = 2 y_k - z_k + F_k A_k,    y_{k+1} = y_k + (F_k A_k + F_{k+1} B_k) / 2.

Eliminating ``y`` gives a leapfrog in ``z`` alone (same values, up to rounding):

    z_1 = z_0 + F_0 c_0,    z_{j+1} = z_{j-1} + F_j c_j,    y_j = (z_j + z_{j-1} + F_j B_{j-1}) / 2,

with ``z_0 = y_0``, ``c_0 = A_0`` and ``c_j = B_{j-1} + A_j``. A step is then one field evaluation and one
contraction with the control (``_Contract``, its kernels chosen by shape); the outputs are formed a chunk at a
time (``_Outputs``). The backward pass reconstructs ``z_{j-1} = z_{j+1} - F_j c_j`` and takes one hand-written
VJP, a chunk of record slots at a time: the cotangents sit in a small ring buffer, and per chunk one GEMM per
layer sums the parameter gradients and one contraction (``transpose_contract``) the CDE's control gradients.
Per step the fields cost about half of midpoint's; what is not halved (parameter gradients, the averaged
outputs, per-solve set-up) is measured in ``make bench``, row 8.
"""
from __future__ import annotations

import torch

from neuralsde.fast.mlp import FusedMLP
from neuralsde.fast.once import first_order
from neuralsde.fast.probe import fused_field
from neuralsde.fast.records import chunk_size
from neuralsde.fast.scratch import index_tensor, scratch


def _leapfrog_controls(ctrl: torch.Tensor, per_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_j`` ``(N + 1, B, C)`` (zero at ``N``) and ``B_{j-1}`` for ``j = 1 .. N`` ``(N, B, C)``."""
    a, b = (ctrl[:-1], ctrl[1:]) if per_point else (ctrl, ctrl)
    c = torch.cat([a, torch.zeros_like(a[:1])])
    c[1:-1] += b[:-1]
    return c, b


def _rows(c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Controls ``(M, B, C)`` as ``M`` views ``(B, C, 1)`` that broadcast against a field ``(B, C, H)``."""
    return c.unsqueeze(-1).unbind(0)


CONTRACTION = None  # None: by shape (``contraction_mode``); or "gemm", "sum", "addcmul" everywhere (tests, benches)


def contraction_mode(batch: int, channels: int, hidden: int, device: torch.device) -> str:
    """How ``z + alpha sum_c F[:, c] ctrl[:, c]`` is formed for a field ``(batch, channels, hidden)``: by the
    shape, never by timing, so that a seeded run rounds the same way every time. The channel-summing GEMM does
    ``hidden`` times the arithmetic needed and pays only while ``channels * hidden`` is tiny; per-channel
    ``addcmul`` pays once the batch is large against the channels; elsewhere a product and a sum over channels.
    The thresholds come from CPU timings over batch 128-2048, 2-27 channels, hidden 16-64; bench row 9
    (``scripts/bench_contractions.py``) times the choice against the GEMM at each experiment's sizes. Other
    devices keep the GEMM (fewest kernels)."""
    if CONTRACTION is not None:
        return CONTRACTION
    if device.type != "cpu" or (channels * hidden <= 64 and batch <= 512):
        return "gemm"
    return "addcmul" if batch >= 128 * channels else "sum"


class _Contract:
    """``z + alpha F c`` for fields ``F`` ``(batch, C, H)`` and controls ``c`` ``(batch, C, 1)``, in the mode
    ``contraction_mode`` picks for ``batch`` rows. With ``own_product=False`` the caller passes the buffer for
    ``F * c`` (``F`` itself, when ``F`` is not needed afterwards)."""

    def __init__(self, mlp: FusedMLP, batch: int, like: torch.Tensor, own_product: bool = True):
        self.mode = contraction_mode(batch, mlp.channels, mlp.hidden, like.device)
        self.q, self.channels = mlp.q, mlp.channels
        self.m = like.new_empty(batch, mlp.channels, mlp.hidden) if own_product and self.mode != "addcmul" else None
        self.s = like.new_empty(batch, mlp.hidden) if self.mode == "sum" else None

    def __call__(self, z, ctrl, F, alpha: float = 1.0, out=None, prod=None):
        if self.mode == "addcmul":
            out = torch.addcmul(z, F[:, 0], ctrl[:, 0], value=alpha, out=out)
            for i in range(1, self.channels):
                out.addcmul_(F[:, i], ctrl[:, i], value=alpha)
            return out
        m = torch.mul(F, ctrl, out=self.m if prod is None else prod)
        if self.mode == "sum":
            s = torch.sum(m, 1, out=self.s if self.s.size(0) == m.size(0) else None)
            return torch.add(z, s, alpha=alpha, out=out)
        return torch.addmm(z, m.view(m.size(0), -1), self.q, alpha=alpha, out=out)


OUTPUT_BYTES = 2 ** 20  # the observed fields ``F_j`` buffered per output chunk


class _Outputs:
    """``y_j = (z_j + z_{j-1} + F_j B_{j-1}) / 2`` at the observed ``j >= 1``, a chunk at a time: the solve
    writes ``F_j`` into ``targets[j]`` (a row of a small reused buffer), appends ``z_j`` and ``z_{j-1}`` to
    ``zs`` / ``zps``, and calls ``flush(j)`` at the ``j`` in ``flush_at``."""

    def __init__(self, mlp: FusedMLP, ys: torch.Tensor, b: torch.Tensor, obs: list[int]):
        self.ys, self.b = ys, b.unsqueeze(-1)  # b: B_{j-1} (N, B, C) -> (N, B, C, 1)
        k = chunk_size(ys.size(1) * mlp.channels * mlp.hidden * ys.element_size(), len(obs) - 1,
                       budget=OUTPUT_BYTES)
        self.contract = _Contract(mlp, k * ys.size(1), ys, own_product=False)  # the product goes into F's rows
        self.f = scratch("rh.f_obs", (k, ys.size(1), mlp.channels, mlp.hidden), ys)
        f_at = self.f.view(k, ys.size(1), -1).unbind(0)
        self.targets = {j: f_at[i % k] for i, j in enumerate(obs[1:])}
        self.flush_at = {j: (i - i % k, i % k + 1) for i, j in enumerate(obs[1:])
                         if i % k == k - 1 or i == len(obs) - 2}  # j -> (chunk's first index in obs[1:], count)
        self.obs, self.zs, self.zps = obs, [], []

    def flush(self, j: int) -> None:
        i0, m = self.flush_at[j]
        rows = self.obs[1 + i0:1 + i0 + m]  # B_{j-1} of these j: a slice where they are consecutive
        prev = (self.b[rows[0] - 1:rows[-1]] if rows[-1] - rows[0] == m - 1
                else self.b[index_tensor(tuple(r - 1 for r in rows), self.b.device)])
        f, ctrl = self.f[:m].flatten(0, 1), prev.flatten(0, 1)
        out = self.ys[i0 + 1:i0 + 1 + m].flatten(0, 1)
        z = torch.add(torch.stack(self.zs), torch.stack(self.zps)).flatten(0, 1)
        self.contract(z, ctrl, f, out=out, prod=f).mul_(0.5)
        self.zs.clear()  # the solve holds these lists
        self.zps.clear()


class _FusedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mlp: FusedMLP, obs, per_point, keep, ctrl, y0, *params):
        # ctrl: CDE (per_point) w (N + 1, B, C); SDE v (N, B, C).
        c, b = _leapfrog_controls(ctrl, per_point)
        rows = _rows(c)
        n = c.size(0) - 1
        step = _Contract(mlp, y0.size(0), y0)
        ys = y0.new_empty(len(obs), *y0.shape)
        ys[0] = y0
        outputs = _Outputs(mlp, ys, b, obs)
        targets, flush_at, zs, zps = outputs.targets, outputs.flush_at, outputs.zs, outputs.zps
        evaluate = mlp.evaluator()
        z_prev = z = y0.detach()
        for j in range(n + 1):
            target = targets.get(j)
            S = evaluate(z, j, target)
            if target is not None:
                zs.append(z)
                zps.append(z_prev)
            if j < n:
                z_prev, z = z, step(z_prev, rows[j], S)
            if j in flush_at:  # after the step: the flush scales the chunk's F rows, S among them, in place
                outputs.flush(j)
        ctx.mlp, ctx.obs, ctx.per_point, ctx.keep = mlp, obs, per_point, keep
        ctx.save_for_backward(ys, z, z_prev, c, b)
        return ys

    @staticmethod
    @first_order
    def backward(ctx, grad_ys):
        # The cotangent a_j of z_j: a_j = a_{j+2} + J_j^T g_j + (gy_j + gy_{j+1}) / 2, with the field's cotangent
        # g_j = c_j ⊗ a_{j+1} + B_{j-1} ⊗ gy_j / 2 (the last term where y_j is observed, j >= 1).
        ys, z, z_prev, c, b = ctx.saved_tensors
        mlp, obs = ctx.mlp, ctx.obs
        n, batch, hid = c.size(0) - 1, z.size(0), z.size(1)
        rows = _rows(c)
        step = _Contract(mlp, batch, ys)
        need_ctrl = ctx.per_point and ctx.needs_input_grad[4]
        half = torch.mul(grad_ys, 0.5, out=scratch("rh.half", grad_ys.shape, grad_ys))
        # In-loop products are cheaper than one doubly-broadcast product over all steps.
        b_at, hv = b.unsqueeze(-1).unbind(0), half.unsqueeze(2).unbind(0)  # (B, C, 1), (B, 1, H)
        pre = [None] * (n + 1)  # (B_{j-1}, gy_j / 2) at observed j >= 1
        extra = [None] * (n + 1)  # (gy_j + gy_{j+1}) / 2
        h_at = {j: half[i] for i, j in enumerate(obs) if j} if need_ctrl else None  # gy_j / 2, observed j >= 1
        if len(obs) == n + 1:
            pre[1:] = zip(b_at, hv[1:], strict=True)
            gy2 = torch.add(half[:-1], half[1:], out=scratch("rh.gy2", half[:-1].shape, half))
            extra[:-1], extra[-1] = gy2.unbind(0), half[-1]
        else:
            for i, j in enumerate(obs):
                if j:
                    pre[j] = (b_at[j - 1], hv[i])
                for jj in (j, j - 1):
                    if jj >= 0:
                        extra[jj] = half[i] if extra[jj] is None else extra[jj] + half[i]
        mlp.start_records(batch, ys, n + 1, min_size=2)  # the ring carries two cotangents into the next chunk
        size = mlp.rec.size
        ring = scratch("rh.a", (size + 2, batch, hid), ys)  # a_{j+2}, a_{j+1} (carried), then the chunk's a_j
        ring[:2].zero_()
        ring_at, ring_v = ring.unbind(0), ring.unsqueeze(2).unbind(0)  # (B, H), (B, 1, H)
        acc_buf = ys.new_empty(batch, hid)
        cot = ys.new_empty(batch, mlp.channels, hid)
        record, vjp = mlp.kernels()
        if need_ctrl:
            grad_ctrl = ys.new_empty(n + 1, batch, c.size(-1))  # processing order: row r is j = N - r
        z_next, zin = None, z
        for r0 in range(0, n + 1, size):
            m = min(size, n + 1 - r0)
            for i in range(m):
                j = n - r0 - i
                S = record(zin, j, i)
                g = torch.mul(rows[j], ring_v[i + 1], out=cot)
                p, e = pre[j], extra[j]
                if p is not None:
                    g.addcmul_(p[0], p[1])
                vjp(g, ring_at[i] if e is None else torch.add(ring_at[i], e, out=acc_buf), slot=i,
                    out=ring_at[i + 2])
                if i == m - 1:  # chunk done: its control gradients, parameter gradients, carries
                    if need_ctrl:
                        _chunk_ctrl_grads(mlp, grad_ctrl[r0:r0 + m], ring, h_at, n - r0, n)
                    mlp.flush(m)
                    if j:
                        ring[:2].copy_(ring[m:m + 2])
                # the next step's input: z_{j-1} = z_{j+1} - F_j c_j, into its record slot
                if j >= 2:
                    if j == n:
                        z_next, zin = zin, z_prev
                    else:
                        z_next, zin = zin, step(z_next, rows[j], S, alpha=-1.0, out=mlp.z_slot((i + 1) % size))
                elif j == 1:
                    zin = ys[0]  # at t0 the field is differentiated at the true y0, as torchsde does
        grad_y0 = ring_at[m + 1] + ring_at[m] + half[0]  # z_0 = y_0 also feeds z_1 directly, and is y_0 itself
        grad_ctrl = grad_ctrl.flip(0) if need_ctrl else None
        grads = [g if k else None for g, k in zip(mlp.param_grads(), ctx.keep, strict=True)]
        return (None, None, None, None, grad_ctrl, grad_y0, *grads)


def _chunk_ctrl_grads(mlp: FusedMLP, out, ring, h_at: dict, j_first: int, n: int) -> None:
    """CDE control gradients ``out`` ``(m, B, C)`` of a chunk (processing order, ``j = j_first, j_first - 1, ...``).
    With ``c_0 = w_0``, ``c_j = 2 w_j`` (``0 < j < N``), ``c_N = 0`` and ``B_{j-1} = w_j``: ``dL/dw_j = F_j^T v_j``,
    ``v_j = k_j a_{j+1} + gy_j / 2`` with ``k`` 1, 2, 0 at ``j = 0``, inside, ``N`` (``y_0`` does not read
    ``F_0``). One contraction per chunk instead of two ops per step."""
    m, batch = out.size(0), out.size(1)
    v = torch.mul(ring[1:m + 1], 2)  # a_{j+1}, from the ring of the chunk's cotangents
    for i in range(m):
        j = j_first - i
        if j == n:
            v[i].zero_()  # not ``v[i] = 0``: on a GPU that goes through a host-side scalar tensor
        elif j == 0:
            v[i].copy_(ring[i + 1])
        if j in h_at:
            v[i] += h_at[j]
    F = mlp.rec.out[:m].view(m * batch, mlp.channels, -1)
    transpose_contract(F, v.view(m * batch, -1), out.view(m * batch, -1))


BMM_MAX = 128  # channels x hidden up to which a batched product beats a product and a sum for F^T a


def transpose_contract(F: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[r, c] = sum_h F[r, c, h] a[r, h]`` for fields ``F`` ``(R, C, H)``: one ``bmm`` of tiny matrices for
    narrow fields, a product and a sum over ``H`` for wide ones. One-off CPU timings (1 thread, 2026-11-30): bmm
    1.5 ms vs 0.38 ms at 1024 x 27 x 64, 0.12 vs 0.29 ms at 8192 x 2 x 16; energy's SDE-GAN step 4% faster."""
    if F.size(1) * F.size(2) <= BMM_MAX or F.device.type != "cpu":
        return torch.bmm(F, a.unsqueeze(-1), out=out.unsqueeze(-1)).squeeze(-1)
    return torch.sum(torch.mul(F, a.unsqueeze(1), out=scratch("ctrl.prod", F.shape, F)), -1, out=out)


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
    """zs ``(T, B, H)`` via the fused path if ``func`` is a CDE field ``mlp.cde_mlp`` knows, else None."""
    fused = fused_field(func, params, t_grid, t_grid[-1], -1, z0)
    if fused is None:
        return None
    return _FusedAdjoint.apply(fused[0], obs, True, fused[1], U * dt, z0, *fused[0].params)
