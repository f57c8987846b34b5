"""The latent SDE's augmented field (``logqp.logqp_field`` of a ``LatentSDEFunc``) with hand-written VJPs.

One evaluation at evaluation-time index ``k`` of the state ``Y = [y, l]``:

    posterior and prior drifts  [f, h] = two MLPs, run as one: first layers stacked (the posterior's time and
                                context columns folded into a per-step bias, computed 32 steps at a time),
                                later layers block-diagonal, time scale folded into the last;
    diffusion                   g_i = ns (floor + scale sigmoid(w_out_i . lipswish(b_in_i + tau w0_i + y_i w1_i)
                                + b_out_i)), all dimensions in one broadcast;
    KL integrand                |v|^2 / 2, v = (f - h) / g (torchsde's stable division),

so ``F = [f, |v|^2 / 2]``, ``G = [g, 0]``. The VJP is written out by hand; what the parameter (and context)
gradients need from each evaluation is kept in chunk buffers and summed a chunk at a time (one GEMM per layer
instead of some thirty small accumulations per step). The solvers call it through their indexed-field protocol
(``neuralsde.fast.solve``; ``midpoint.midpoint_solve`` at ``midpoint.evaluation_times``), so the adjoints around
it are the generic ones, tested against torchsde. Other structures take the autograd path.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.heads import _BWD, _FWD, parse, plain
from neuralsde.fast.logqp import STABLE_EPS, logqp_field
from neuralsde.fast.probe import agrees
from neuralsde.fast.records import chunk_size

_SILU_BWD = torch.ops.aten.silu_backward.default
_SILU_BWD_INTO, _SILU_INTO = _BWD["silu"], _FWD["silu"]  # the forms that write into out= / grad_input=
CHUNK = None  # evaluations per parameter-gradient sum; None: as many as fit in records.CACHE_BYTES
BIAS_ROWS = 32  # evaluations whose first-layer biases are formed at once (FusedLatent._bias)
DIFFUSION_LIPSWISH = 0.909  # DiagonalDiffusion's activation scale (written in its forward; the probe checks it)


def _hidden_scales(acts) -> list[float] | None:
    """The scale of each hidden activation if all are (scaled) SiLU, as LipSwish is; else None."""
    if any(kind != "silu" for kind, _ in acts):
        return None
    return [scale for _, scale in acts]


def _supported(sde) -> tuple | None:
    """``(posterior linears, prior linears, activation scales)`` if ``sde`` is a plain ``LatentSDEFunc``."""
    if type(sde).__qualname__ != "LatentSDEFunc" or not plain(sde):
        return None
    if any(name in vars(sde) for name in ("f", "g", "h", "_time", "_context_at", "forward")):
        return None  # an instance override (a test sets f = h): the module path sees it, this would not
    diffusion = getattr(sde, "diffusion", None)
    if type(diffusion).__qualname__ != "DiagonalDiffusion" or "forward" in vars(diffusion):
        return None
    post, prior = parse(sde.posterior_net), parse(sde.prior_net)
    if post is None or prior is None or post[2] or prior[2] or len(post[0]) != len(prior[0]) or len(post[0]) < 2:
        return None
    scales, prior_scales = _hidden_scales(post[1]), _hidden_scales(prior[1])
    if scales is None or scales != prior_scales:
        return None
    if any(a.out_features != b.out_features for a, b in zip(post[0][:-1], prior[0][:-1], strict=True)):
        return None
    context = getattr(sde, "context", None)
    if not isinstance(context, torch.Tensor) or context.dim() != 3:
        return None
    return post[0], prior[0], scales


class _Local:
    """An evaluation at grid index ``k`` with what its VJP needs."""

    __slots__ = ("owner", "k", "slot", "y", "pres", "acts", "pg", "sg", "sig", "gs", "mask", "v", "f", "gt")

    def vjp(self, a_f, a_g, params, need_u):
        return self.owner._vjp(self, a_f, a_g), None, [None] * len(params)


def _silu_bwd(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return _SILU_BWD(grad, x) if out is None else _SILU_BWD_INTO(grad, x, grad_input=out)


class _Chunk:
    """Per-evaluation inputs and cotangents that the parameter gradients read, for ``size`` evaluations."""

    def __init__(self, fl: FusedLatent):
        batch, d, hd = fl.batch, fl.d, fl.w1.size(-1)
        widths = [w.size(1) for w in fl.ws] + [w.size(0) for w in fl.ws] + [fl.w0y.size(0), d, d, 2 * d * hd]
        self.size = chunk_size(batch * sum(widths) * fl.like.element_size(), fl.points, CHUNK)

        def new(*shape):
            return fl.like.new_empty(self.size, batch, *shape)
        self.y, self.d_og, self.sg, self.d_pg = new(d), new(d), new(d, hd), new(d, hd)
        self.acts = [new(w.size(1)) for w in fl.ws]  # inputs of the later layers
        self.dd = [new(w.size(0)) for w in fl.ws]  # cotangents of the later layers' outputs
        self.dd0 = new(fl.w0y.size(0))  # cotangents of the first layer's outputs
        self.ks = [0] * self.size


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
        pres, acts = [pre], []
        for i, (w_t, b) in enumerate(zip(self.ws_t, self.bs, strict=True)):
            a = torch.nn.functional.silu(pre) if slot is None else _SILU_INTO(pre, out=self.chunk.acts[i][slot])
            acts.append(a)
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
            keep.k, keep.slot, keep.y, keep.pres, keep.acts = k, slot, y, pres, acts
            keep.pg, keep.sg, keep.sig, keep.gs, keep.mask, keep.v = pg, sg, sig, gs, mask, v
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
        diff, zeros = self.sde.diffusion, torch.zeros_like
        self.grads = {
            "w": [zeros(w) for w in self.ws],  # raw block-diagonal products, scaled at the end
            "b": [zeros(b) for b in self.bs],
            "w0y": zeros(self.w0y), "w_t": zeros(self.w_t), "b0": zeros(self.w_t), "w0c": zeros(self.w0c),
            "context": zeros(self.context), "w_out": zeros(diff.w_out), "b_out": zeros(diff.b_out),
            "b_in": zeros(diff.b_in), "w_in": zeros(diff.w_in),
        }
        self.chunk, self.filled = _Chunk(self), 0

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
                self._flush()
        return torch.cat([dy, dy.new_zeros(dy.size(0), 1)], 1)

    def _flush(self) -> None:
        """Sum the parameter and context gradients of the chunk's ``filled`` evaluations."""
        c, gr, m, h = self.chunk, self.grads, self.filled, self.hid
        self.filled = 0
        if m == 0:
            return
        ks = torch.as_tensor(c.ks[:m], device=self.tau.device)
        tau, y = self.tau[ks], c.y[:m]
        rows = m * y.size(1)
        # diffusion
        d_og, d_pg = c.d_og[:m], c.d_pg[:m]
        gr["w_out"].add_((d_og.unsqueeze(-1) * c.sg[:m]).sum((0, 1)), alpha=DIFFUSION_LIPSWISH)
        gr["b_out"] += d_og.sum((0, 1))
        per_k = d_pg.sum(1)  # (m, d, Hd)
        gr["b_in"] += per_k.sum(0)
        gr["w_in"][:, 0] += (tau @ per_k.view(m, -1)).view_as(per_k[0])
        gr["w_in"][:, 1] += (y.unsqueeze(-1) * d_pg).sum((0, 1))
        # drifts: the heads' diagonal blocks only (the off-diagonal ones are structurally zero)
        for i, gw in enumerate(gr["w"]):
            dd, a = c.dd[i][:m].view(rows, -1), c.acts[i][:m].view(rows, -1)
            n_out, n_in = dd.size(1) // 2, a.size(1) // 2
            gw[:n_out, :n_in].addmm_(dd[:, :n_out].t(), a[:, :n_in])
            gw[n_out:, n_in:].addmm_(dd[:, n_out:].t(), a[:, n_in:])
            gr["b"][i] += dd.sum(0)
        dd0 = c.dd0[:m]  # (m, B, 2H): cotangents of the first layer's outputs
        col = dd0.sum(1)
        gr["b0"] += col.sum(0)
        gr["w_t"] += tau @ col
        gr["w0y"].addmm_(dd0.view(rows, -1).t(), y.reshape(rows, -1))
        dp = dd0[..., :h]  # the posterior's: it alone reads the context
        idx = self.idx[ks]
        gr["w0c"].addmm_(dp.reshape(rows, h).t(), self.context[:, idx].transpose(0, 1).reshape(rows, -1))
        gr["context"].index_add_(1, idx, (dp @ self.w0c).transpose(0, 1))

    def param_grads(self, params) -> list[torch.Tensor | None]:
        """Gradients of ``params`` (the module's parameters and the context) summed over every VJP."""
        if self.chunk is None:
            self._start()
        self._flush()
        gr, h = self.grads, self.hid
        ts, last = self.sde.time_scale, len(self.ws)
        out = {}

        def put(p, g):  # a layer the posterior and prior drifts share (tied weights) gets both heads' parts
            out[id(p)] = g if id(p) not in out else out[id(p)] + g
        post, prior = self.post, self.prior
        for head, lins, rows in ((0, post, slice(0, h)), (1, prior, slice(h, 2 * h))):
            w0 = torch.cat([gr["w_t"][rows].unsqueeze(1), gr["w0y"][rows]]
                           + ([gr["w0c"]] if head == 0 else []), 1)
            put(lins[0].weight, w0)
            put(lins[0].bias, gr["b0"][rows].clone())
            for i in range(1, last + 1):
                gw, gb = gr["w"][i - 1], gr["b"][i - 1]
                n_out, n_in = gw.size(0) // 2, gw.size(1) // 2
                r = slice(0, n_out) if head == 0 else slice(n_out, 2 * n_out)
                c = slice(0, n_in) if head == 0 else slice(n_in, 2 * n_in)
                factor = self.scales[i - 1] * (ts if i == last else 1.0)
                put(lins[i].weight, gw[r, c] * factor)
                put(lins[i].bias, gb[r] * (ts if i == last else 1.0))
        diff = self.sde.diffusion
        out[id(diff.w_out)], out[id(diff.b_out)] = gr["w_out"], gr["b_out"]
        out[id(diff.b_in)], out[id(diff.w_in)] = gr["b_in"], gr["w_in"]
        out[id(self.sde.context)] = gr["context"]
        self.grads = self.chunk = None
        return [out.get(id(p)) for p in params]


def fused_latent(sde: nn.Module, params, times: torch.Tensor, Y0: torch.Tensor) -> FusedLatent | None:
    """A ``FusedLatent`` for ``sde`` at the evaluation ``times`` if it is a plain ``LatentSDEFunc`` whose
    differentiated tensors (``params``) are its own parameters and context, and a probe evaluation agrees with the
    module; else None."""
    found = _supported(sde)
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
