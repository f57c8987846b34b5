"""Straight-line forms of ``mlp.FusedMLP``'s evaluation, record and VJP for the framework's fields (one hidden
layer and a final tanh), with the current weights and record slots bound once per solve: at these sizes Python
attribute lookups and loops cost a visible share of a step. Other structures get the methods themselves."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from neuralsde.fast.heads import _BWD

if TYPE_CHECKING:
    from neuralsde.fast.mlp import FusedMLP


def evaluator(mlp: FusedMLP):
    """``mlp.evaluate``, straight-line where the structure allows (module docstring), else the method."""
    if len(mlp.ws) != 1 or not mlp.final_tanh:
        return mlp.evaluate
    bias_t, wz_t, b1, w1_t, act, minus_one = (mlp.bias_t, mlp.wz_t, mlp.bs[0], mlp.ws_t[0], mlp.act_fns[0],
                                              mlp.minus_one)
    channels, hidden, addmm, sigmoid, add = mlp.channels, mlp.hidden, torch.addmm, torch.sigmoid, torch.add

    def evaluate(z, k, out=None):
        h = sigmoid(addmm(b1, act(addmm(bias_t[k], z, wz_t)), w1_t), out=out)
        return add(minus_one, h, alpha=2, out=h).view(z.size(0), channels, hidden)
    return evaluate


def kernels(mlp: FusedMLP):
    """``(mlp.record, mlp.vjp)`` for the solver loops, straight-line where the structure allows (module docstring),
    else the methods; call after ``start_records`` (the record slots are bound)."""
    if len(mlp.ws) != 1 or not mlp.final_tanh:
        return mlp.record, mlp.vjp
    r = mlp.rec
    slots, times, cache = r.slots, r.times, r.cache
    bias_t, wz_t, wz, b1, w1_t, w1 = mlp.bias_t, mlp.wz_t, mlp.wz, mlp.bs[0], mlp.ws_t[0], mlp.ws[0]
    act, act_bwd, reads_input, minus_one = mlp.act_fns[0], mlp.bwd_fns[0], mlp.bwd_reads_input[0], mlp.minus_one
    addmm, sigmoid, add, mm, tanh_bwd = torch.addmm, torch.sigmoid, torch.add, torch.mm, _BWD["tanh"]

    def record(z, k, slot):
        zs, outs, acts, field, _, field3 = slots[slot]
        times[slot] = k
        if z is not zs and slot != cache:
            zs.copy_(z)
        h = addmm(bias_t[k], z, wz_t, out=outs[0])
        add(minus_one, sigmoid(addmm(b1, act(h, out=acts[0]), w1_t, out=outs[1]), out=field), alpha=2, out=field)
        return field3

    def vjp(grad, acc=None, *, slot, out=None):
        _, outs, acts, field, ds, _ = slots[slot]
        d = tanh_bwd(grad.view(grad.size(0), -1), field, grad_input=ds[1])
        d = act_bwd(mm(d, w1), outs[0] if reads_input else acts[0], grad_input=ds[0])
        return mm(d, wz, out=out) if acc is None else addmm(acc, d, wz, out=out)
    return record, vjp
