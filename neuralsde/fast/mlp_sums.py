"""Parameter gradients of a ``mlp.FusedMLP``'s recorded evaluations: summed one chunk of record slots at a time
(``flush``: one matmul per layer, only the heads' diagonal blocks of a block-diagonal layer), then split back onto
the heads' ``Linear`` weights and biases (``param_grads``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from neuralsde.fast.scratch import index_tensor

if TYPE_CHECKING:
    from neuralsde.fast.mlp import FusedMLP


def head_blocks(mlp: FusedMLP, i: int) -> list[tuple[int, int, int, int]] | None:
    """Row and column ranges of the heads' blocks in fused layer ``i >= 1`` (block-diagonal: the weight
    gradient needs only these); None for one head, or where a head's rows are not contiguous after the output
    permutation."""
    if len(mlp.layers[i]) == 1:
        return None
    rows, r = [], 0
    for lin in mlp.layers[i]:
        rows.append((r, r + lin.out_features))
        r += lin.out_features
    if i == len(mlp.layers) - 1:  # fused row f holds the heads' row perm[f]
        pos = [sorted(f for f, src in enumerate(mlp.perm) if r0 <= src < r1) for r0, r1 in rows]
        if any(p[-1] - p[0] + 1 != len(p) for p in pos):
            return None
        rows = [(p[0], p[-1] + 1) for p in pos]
    cols = [0]
    for lin in mlp.layers[i]:
        cols.append(cols[-1] + lin.in_features)
    return [(r0, r1, c0, c1) for (r0, r1), c0, c1 in zip(rows, cols[:-1], cols[1:], strict=True)]


def flush(mlp: FusedMLP, n: int) -> None:
    """Sum the parameter gradients of the evaluations recorded in slots ``0 .. n - 1``; the caller fills a
    chunk of ``rec.size`` slots, flushes, and reuses them."""
    r = mlp.rec
    first = mlp.acc is None
    if first:
        mlp.acc = [None] * len(mlp.layers)
    for i in range(len(mlp.layers)):
        d = r.d[i][:n]
        d2 = d.reshape(-1, d.size(2))
        x = (r.z if i == 0 else r.a[i - 1])[:n].reshape(d2.size(0), -1)
        blocks = mlp._blocks_at[i] if i else None
        if i == 0:
            col = d.sum(1)  # (n, O0)
            gw = d2.t() @ x
            if mlp.timed:
                tsc = mlp.tsc[index_tensor(tuple(r.times[:n]), d.device)].to(d.dtype)
                gw = torch.cat([(tsc @ col).unsqueeze(1), gw], 1)
            gb = col.sum(0)
        elif blocks is None:
            gw, gb = d2.t() @ x, d.sum((0, 1))
        else:  # only the heads' diagonal blocks: the off-diagonal ones are structurally zero
            gw = torch.zeros(d2.size(1), x.size(1), dtype=d.dtype, device=d.device) if first else mlp.acc[i][0]
            for r0, r1, c0, c1 in blocks:
                gw[r0:r1, c0:c1].addmm_(d2[:, r0:r1].t(), x[:, c0:c1])
            gb = d.sum((0, 1))
            if not first:
                mlp.acc[i][1].add_(gb)
                continue
        if first:
            mlp.acc[i] = (gw, gb)
        else:
            mlp.acc[i][0].add_(gw)
            mlp.acc[i][1].add_(gb)


def param_grads(mlp: FusedMLP) -> list[torch.Tensor]:
    """Gradients of ``mlp.params`` summed over every flushed VJP."""
    last = len(mlp.layers) - 1
    grads = [[] for _ in mlp.layers[0]]
    for i, (w, b) in enumerate(mlp.acc):
        if i:
            w = w.mul_(mlp.layer_scale(i))
        if i == last:
            w, b = w[mlp.inv_perm], b[mlp.inv_perm]
        r = c = 0
        for h, lin in enumerate(mlp.layers[i]):
            o, n = lin.out_features, lin.in_features
            gw = w[r:r + o] if i == 0 else w[r:r + o, c:c + n]
            grads[h] += [gw.contiguous(), b[r:r + o].contiguous()]
            r, c = r + o, c + n
    mlp.rec = mlp.acc = None  # free the records
    return [g for per_head in grads for g in per_head]
