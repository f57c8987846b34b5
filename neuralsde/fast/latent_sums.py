"""Parameter and context gradients of a ``latent.FusedLatent``'s recorded VJPs: what each evaluation's gradients
read is kept in chunk buffers (``Chunk``) and summed a chunk at a time (``flush``: one GEMM per layer instead of some
thirty small accumulations per step), then split back onto the module's tensors (``module_grads``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from neuralsde.fast.latent_match import DIFFUSION_LIPSWISH
from neuralsde.fast.records import chunk_size

if TYPE_CHECKING:
    from neuralsde.fast.latent import FusedLatent


class Chunk:
    """Per-evaluation inputs and cotangents that the parameter gradients read, for ``size`` evaluations
    (``fixed``, else as many as fit in ``records.CACHE_BYTES``)."""

    def __init__(self, fl: FusedLatent, fixed: int | None):
        batch, d, hd = fl.batch, fl.d, fl.w1.size(-1)
        widths = [w.size(1) for w in fl.ws] + [w.size(0) for w in fl.ws] + [fl.w0y.size(0), d, d, 2 * d * hd]
        self.size = chunk_size(batch * sum(widths) * fl.like.element_size(), fl.points, fixed)

        def new(*shape):
            return fl.like.new_empty(self.size, batch, *shape)
        self.y, self.d_og, self.sg, self.d_pg = new(d), new(d), new(d, hd), new(d, hd)
        self.acts = [new(w.size(1)) for w in fl.ws]  # inputs of the later layers
        self.dd = [new(w.size(0)) for w in fl.ws]  # cotangents of the later layers' outputs
        self.dd0 = new(fl.w0y.size(0))  # cotangents of the first layer's outputs
        self.ks = [0] * self.size


def zero_grads(fl: FusedLatent) -> dict:
    """The sums, in the fused layout, started at zero."""
    diff, zeros = fl.sde.diffusion, torch.zeros_like
    return {
        "w": [zeros(w) for w in fl.ws],  # raw block-diagonal products, scaled at the end
        "b": [zeros(b) for b in fl.bs],
        "w0y": zeros(fl.w0y), "w_t": zeros(fl.w_t), "b0": zeros(fl.w_t), "w0c": zeros(fl.w0c),
        "context": zeros(fl.context), "w_out": zeros(diff.w_out), "b_out": zeros(diff.b_out),
        "b_in": zeros(diff.b_in), "w_in": zeros(diff.w_in),
    }


def flush(fl: FusedLatent) -> None:
    """Sum the parameter and context gradients of the chunk's ``filled`` evaluations."""
    c, gr, m, h = fl.chunk, fl.grads, fl.filled, fl.hid
    fl.filled = 0
    if m == 0:
        return
    ks = torch.as_tensor(c.ks[:m], device=fl.tau.device)
    tau, y = fl.tau[ks], c.y[:m]
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
    idx = fl.idx[ks]
    gr["w0c"].addmm_(dp.reshape(rows, h).t(), fl.context[:, idx].transpose(0, 1).reshape(rows, -1))
    gr["context"].index_add_(1, idx, (dp @ fl.w0c).transpose(0, 1))


def module_grads(fl: FusedLatent, params) -> list[torch.Tensor | None]:
    """The flushed sums as gradients of ``params`` (the module's parameters and the context)."""
    gr, h = fl.grads, fl.hid
    ts, last = fl.sde.time_scale, len(fl.ws)
    out = {}

    def put(p, g):  # a layer the posterior and prior drifts share (tied weights) gets both heads' parts
        out[id(p)] = g if id(p) not in out else out[id(p)] + g
    for head, lins, rows in ((0, fl.post, slice(0, h)), (1, fl.prior, slice(h, 2 * h))):
        w0 = torch.cat([gr["w_t"][rows].unsqueeze(1), gr["w0y"][rows]]
                       + ([gr["w0c"]] if head == 0 else []), 1)
        put(lins[0].weight, w0)
        put(lins[0].bias, gr["b0"][rows].clone())
        for i in range(1, last + 1):
            gw, gb = gr["w"][i - 1], gr["b"][i - 1]
            n_out, n_in = gw.size(0) // 2, gw.size(1) // 2
            r = slice(0, n_out) if head == 0 else slice(n_out, 2 * n_out)
            c = slice(0, n_in) if head == 0 else slice(n_in, 2 * n_in)
            factor = fl.scales[i - 1] * (ts if i == last else 1.0)
            put(lins[i].weight, gw[r, c] * factor)
            put(lins[i].bias, gb[r] * (ts if i == last else 1.0))
    diff = fl.sde.diffusion
    out[id(diff.w_out)], out[id(diff.b_out)] = gr["w_out"], gr["b_out"]
    out[id(diff.b_in)], out[id(diff.w_in)] = gr["b_in"], gr["w_in"]
    out[id(fl.sde.context)] = gr["context"]
    return [out.get(id(p)) for p in params]
