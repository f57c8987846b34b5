"""The latent SDE's augmented field (``logqp.logqp_field`` of a ``LatentSDEFunc``) with hand-written VJPs.

One evaluation at evaluation-time index ``k`` of the state ``Y = [y, l]``:

    posterior and prior drifts  [f, h] = two MLPs, run as one: first layers stacked (the posterior's time and
                                context columns folded into a per-step bias, made ``BIAS_ROWS`` steps at a time),
                                later layers block-diagonal, time scale folded into the last;
    diffusion                   g_i = ns (floor + scale sigmoid(w_out_i . lipswish(b_in_i + tau w0_i + y_i w1_i)
                                + b_out_i)), all dimensions in one broadcast;
    KL integrand                |v|^2 / 2, v = (f - h) / g (torchsde's stable division),

so ``F = [f, |v|^2 / 2]``, ``G = [g, 0]``. The VJP is written out by hand; what the parameter (and context)
gradients need from each evaluation is kept in chunk buffers and summed a chunk at a time (``latent_sums``). The
solvers call it through their indexed-field protocol (``neuralsde.fast.solve``; ``midpoint.midpoint_solve`` at
``midpoint.evaluation_times``), so the adjoints around it are the generic ones, tested against torchsde. Structures
other than those ``latent_match`` accepts take the autograd path.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.heads import _BWD, _FWD
from neuralsde.fast.latent_match import DIFFUSION_LIPSWISH, supported
from neuralsde.fast.latent_sums import Chunk, flush, module_grads, zero_grads
from neuralsde.fast.logqp import STABLE_EPS, logqp_field
from neuralsde.fast.probe import agrees

_SILU_BWD = torch.ops.aten.silu_backward.default
_SILU_BWD_INTO, _SILU_INTO = _BWD["silu"], _FWD["silu"]  # the forms that write into out= / grad_input=
CHUNK = None  # evaluations per parameter-gradient sum; None: as many as fit in records.CACHE_BYTES
BIAS_ROWS = 32  # evaluations whose first-layer biases are formed at once (FusedLatent._bias)


class _Local:
    """An evaluation at grid index ``k`` with what its VJP needs."""

    __slots__ = ("owner", "k", "slot", "pres", "pg", "sig", "gs", "mask", "v", "f", "gt")

    def vjp(self, a_f, a_g, params, need_u):
        return self.owner._vjp(self, a_f, a_g), None, [None] * len(params)


def _silu_bwd(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return _SILU_BWD(grad, x) if out is None else _SILU_BWD_INTO(grad, x, grad_input=out)


class FusedLatent:
    """``LatentSDEFunc``'s augmented field at the evaluation ``times`` (indexed by position), prepared with the
    current weights and context.

    Build with ``fused_latent``; ``at``, ``local`` and ``param_grads`` are ``neuralsde.fast.solve``'s indexed-field
    protocol. A recorded local's VJP is taken before the next local is made (as the adjoint loops do): such locals
    share chunk slots in that order. ``local(k, Y, record=False)`` is a VJP to the state only (midpoint's first
    adjoint stage): its parameter gradients are not summed.
    """

    def __init__(self, sde, post, prior, scales, times: torch.Tensor, like: torch.Tensor):
        self.sde, self.post, self.prior, self.scales = sde, post, prior, scales
        self.d = sde.latent_size
        self.hid = post[0].out_features
        dtype = like.dtype
        context = sde.context
        with torch.no_grad():
            ts = sde.time_scale
            self.tau = (times * ts).to(dtype)  # as LatentSDEFunc._time
            # as LatentSDEFunc._context_at: the last observation index <= t (with its tolerance)
            self.idx = torch.floor(times.detach() + 1e-6).long().clamp(0, context.size(1) - 1)
            d = self.d
            w0p, w0q = post[0].weight, prior[0].weight
            self.w_t = torch.cat([w0p[:, 0], w0q[:, 0]])
            self.w0y = torch.cat([w0p[:, 1:1 + d], w0q[:, 1:1 + d]])  # (2H, d)
            self.w0y_t = self.w0y.t().contiguous()
            self.w0c = w0p[:, 1 + d:]  # (H, C)
            b0 = torch.cat([post[0].bias, prior[0].bias])
            self.base = torch.addr(b0, self.tau, self.w_t)  # (K, 2H)
            batch = like.size(0)
            self.context = context.detach()
            self.context_t, self.w0c_t = self.context.transpose(0, 1), self.w0c.t()  # for _bias (views)
            self.bias_blocks = {}  # block -> its (B, 2H) biases, see _bias
            last = len(post) - 1
            self.ws, self.ws_t, self.bs = [], [], []
            for i in range(1, last + 1):
                w = torch.block_diag(post[i].weight, prior[i].weight) * scales[i - 1]
                b = torch.cat([post[i].bias, prior[i].bias])
                if i == last:
                    w, b = w * ts, b * ts
                self.ws.append(w)
                self.ws_t.append(w.t().contiguous())
                self.bs.append(b)
            diff = sde.diffusion
            ns = sde.noise_scale
            self.bg = (diff.b_in + self.tau.view(-1, 1, 1) * diff.w_in[:, 0]).unbind(0)  # (d, Hd) per k
            self.w1 = diff.w_in[:, 1]
            self.w_out = DIFFUSION_LIPSWISH * diff.w_out
            self.b_out = diff.b_out
            self.g0, self.g1 = ns * diff.floor, ns * diff.scale
        self.batch, self.points, self.like = batch, len(times), like.detach()  # like: shape, dtype, device of chunks
        self.grads = self.chunk = None

    # ------------------------------------------------------------------------------------- evaluation

    def _evaluate(self, k: int, Y: torch.Tensor, keep: _Local | None, record: bool = True):
        d = self.d
        y = Y[:, :d]
        slot = None
        if keep is not None and record:  # what the parameter gradients read goes straight into its chunk slot
            if self.chunk is None:
                self._start()
            slot = self.filled
            y = self.chunk.y[slot].copy_(y)
        pre = torch.addmm(self._bias(k), y, self.w0y_t)
        pres = [pre]
        for i, (w_t, b) in enumerate(zip(self.ws_t, self.bs, strict=True)):
            a = torch.nn.functional.silu(pre) if slot is None else _SILU_INTO(pre, out=self.chunk.acts[i][slot])
            pre = torch.addmm(b, a, w_t)
            pres.append(pre)
        f, h = pre[:, :d], pre[:, d:]
        pg = torch.addcmul(self.bg[k], y.unsqueeze(-1), self.w1)  # (B, d, Hd)
        sg = torch.nn.functional.silu(pg) if slot is None else _SILU_INTO(pg, out=self.chunk.sg[slot])
        sig = torch.sigmoid((sg * self.w_out).sum(-1) + self.b_out)
        g = torch.add(self.g0, sig, alpha=self.g1)
        mask = g.abs() > STABLE_EPS
        gs = torch.where(mask, g, STABLE_EPS * g.sign())
        v = (f - h) / gs
        F = torch.cat([f, 0.5 * (v * v).sum(1, keepdim=True)], 1)
        G = torch.cat([g, g.new_zeros(g.size(0), 1)], 1)
        if keep is not None:
            # the VJP's reads; the parameter gradients' (y, activations) are in the chunk slot
            keep.k, keep.slot, keep.pres = k, slot, pres
            keep.pg, keep.sig, keep.gs, keep.mask, keep.v = pg, sig, gs, mask, v
            keep.f, keep.gt = F, G
        return F, G

    def _bias(self, k: int) -> torch.Tensor:
        """First-layer bias ``(B, 2H)`` (time and context terms) at evaluation ``k``, made ``BIAS_ROWS``
        evaluations at a time: all at once held ``(K, B, 2H)``, growing with the steps (midpoint: ``K = 4 N``) far
        past the paths. The solves walk one range of evaluation indices, or two interleaved (midpoint's adjoint):
        a few blocks suffice."""
        j, i = divmod(k % self.points, BIAS_ROWS)
        rows = self.bias_blocks.get(j)
        if rows is None:
            if len(self.bias_blocks) >= 4:
                self.bias_blocks.pop(next(iter(self.bias_blocks)))
            base, h = self.base[j * BIAS_ROWS:(j + 1) * BIAS_ROWS].unsqueeze(1), self.hid
            block = base.new_empty(base.size(0), self.batch, 2 * h)
            context = self.context_t[self.idx[j * BIAS_ROWS:(j + 1) * BIAS_ROWS]]  # (rows, B, C)
            torch.add(context @ self.w0c_t, base[..., :h], out=block[..., :h])
            block[..., h:] = base[..., h:]
            rows = self.bias_blocks[j] = block.unbind(0)
        return rows[i]

    def at(self, k: int, Y: torch.Tensor):
        return self._evaluate(k, Y, None)

    def local(self, k: int, Y: torch.Tensor, record: bool = True) -> _Local:
        loc = _Local()
        loc.owner = self
        self._evaluate(k, Y, loc, record)
        return loc

    # ------------------------------------------------------------------------------------------- VJP

    def _start(self):
        self.grads, self.chunk, self.filled = zero_grads(self), Chunk(self, CHUNK), 0

    def _vjp(self, loc: _Local, a_F: torch.Tensor, a_G: torch.Tensor) -> torch.Tensor:
        c, d, s = self.chunk, self.d, loc.slot
        rec = s is not None  # recorded: the cotangents the parameter gradients read go into its chunk slot
        a_l = a_F[:, d:]
        w = a_l * loc.v / loc.gs
        dd = torch.cat([a_F[:, :d] + w, -w], 1, out=c.dd[-1][s] if rec else None)  # cotangents of f and h
        a_g = a_G[:, :d] - (w * loc.v) * loc.mask
        # diffusion
        d_og = torch.mul(a_g * (loc.sig * (1 - loc.sig)), self.g1, out=c.d_og[s] if rec else None)
        d_pg = _silu_bwd(d_og.unsqueeze(-1) * self.w_out, loc.pg, c.d_pg[s] if rec else None)
        dy = (d_pg * self.w1).sum(-1)
        # drifts, last layer first
        for i in range(len(self.ws) - 1, -1, -1):
            dd = _silu_bwd(dd @ self.ws[i], loc.pres[i], (c.dd[i - 1][s] if i else c.dd0[s]) if rec else None)
        dy = torch.addmm(dy, dd, self.w0y)
        if rec:
            c.ks[s] = loc.k
            self.filled += 1
            if self.filled == c.size:
                flush(self)
        return torch.cat([dy, dy.new_zeros(dy.size(0), 1)], 1)

    def param_grads(self, params) -> list[torch.Tensor | None]:
        """Gradients of ``params`` (the module's parameters and the context) summed over every VJP."""
        if self.chunk is None:
            self._start()
        flush(self)
        grads = module_grads(self, params)
        self.grads = self.chunk = None
        return grads


def fused_latent(sde: nn.Module, params, times: torch.Tensor, Y0: torch.Tensor) -> FusedLatent | None:
    """A ``FusedLatent`` for ``sde`` at the evaluation ``times`` if it is a plain ``LatentSDEFunc`` whose
    differentiated tensors (``params``) are its own parameters and context, and a probe evaluation agrees with the
    module; else None."""
    found = supported(sde)
    if found is None:
        return None
    own = {id(p) for p in sde.parameters()} | {id(sde.context)}
    if not {id(p) for p in params if p.requires_grad} <= own or sde.context.size(0) != Y0.size(0):
        return None
    fused = FusedLatent(sde, *found, times, Y0)
    k = len(times) - 1
    with torch.no_grad():  # guards against the module's code differing from what is written out here
        F, G = fused.at(k, Y0.detach())
        F_ref, G_ref = logqp_field(sde)(times[k], Y0.detach(), None)
        if not (agrees(F, F_ref, "LatentSDEFunc's logqp field") and agrees(G, G_ref, "LatentSDEFunc's diffusion")):
            return None
    return fused
