"""MLP heads evaluated as one wide network, with a hand-written VJP (no autograd engine per step).

The heads are ``neuralsde.nn.MLP``-shaped ``nn.Sequential``s (Linear, activation, ..., Linear[, Tanh]) that
all read ``[t * scale, z]``. They are fused: first layers stacked, later layers block-diagonal (zero blocks
add exact zeros), output rows permuted so the result is ``(B, C, H)``, control channel first. Same
parameters, same maths; only the rounding of the matmuls differs from the unfused modules.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.nn import LipSwish

_tanh_bwd = torch.ops.aten.tanh_backward.default
_silu_bwd = torch.ops.aten.silu_backward.default
_ACTIVATIONS = {LipSwish: ("silu", 0.909), nn.SiLU: ("silu", 1.0), nn.Tanh: ("tanh", 1.0)}


def parse(net) -> tuple[list[nn.Linear], list[tuple[str, float]], bool] | None:
    """``(linears, hidden activations (kind, scale), final tanh)`` or None if ``net`` is not a plain MLP."""
    if not isinstance(net, nn.Sequential) or type(net).forward is not nn.Sequential.forward:
        return None
    linears, acts, pending = [], [], None
    for m in net:
        if type(m) is nn.Linear and m.bias is not None:
            if linears and pending is None:
                return None  # two Linears in a row
            if pending is not None:
                acts.append(pending)
            linears.append(m)
            pending = None
        elif type(m) in _ACTIVATIONS and linears and pending is None:
            pending = _ACTIVATIONS[type(m)]
        else:
            return None
    if not linears or pending not in (None, ("tanh", 1.0)):
        return None
    return linears, acts, pending is not None


def plain(module: nn.Module) -> bool:
    """No hooks or parametrizations anywhere: calling the weights directly is what calling the module does."""
    from torch.nn.modules import module as m
    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return False
    return not any(x._forward_hooks or x._forward_pre_hooks or hasattr(x, "parametrizations")
                   for x in module.modules())


class FusedMLP:
    """Heads ``nets`` sharing the input ``[t * scale, z]``; output ``(B, C, H)`` with ``C * H`` outputs.

    ``perm[i]``: which output of the concatenated heads goes to fused output column ``i``.
    """

    def __init__(self, nets, perm: list[int], channels: int, hidden: int):
        parsed = [parse(n) for n in nets]
        if any(p is None for p in parsed) or len({(len(p[0]), tuple(p[1]), p[2]) for p in parsed}) != 1:
            raise ValueError("heads are not MLPs of one structure")
        self.layers = [[p[0][i] for p in parsed] for i in range(len(parsed[0][0]))]
        self.acts, self.final_tanh = parsed[0][1], parsed[0][2]
        self.params = [t for p in parsed for lin in p[0] for t in (lin.weight, lin.bias)]
        self.perm, self.channels, self.hidden = perm, channels, hidden
        n_out = sum(lin.out_features for lin in self.layers[-1])
        if sorted(perm) != list(range(n_out)) or n_out != channels * hidden:
            raise ValueError("bad output permutation")

    def prepare(self, tsc: torch.Tensor) -> None:
        """Fuse the current weights; ``tsc`` ``(N + 1,)`` the scaled time of each grid point."""
        with torch.no_grad():
            perm = torch.as_tensor(self.perm, device=tsc.device)
            w0 = torch.cat([lin.weight for lin in self.layers[0]])
            b0 = torch.cat([lin.bias for lin in self.layers[0]])
            if len(self.layers) == 1:
                w0, b0 = w0[perm], b0[perm]
            self.wz = w0[:, 1:].contiguous()  # (O0, H)
            self.wz_t = self.wz.t()
            self.bias_rows = torch.addr(b0, tsc.to(b0.dtype), w0[:, 0])  # b0 + t_k * w_t, (N + 1, O0)
            self.ws, self.bs = [], []
            for i, lins in enumerate(self.layers[1:]):
                w = torch.block_diag(*[lin.weight for lin in lins]) * self.acts[i][1]
                b = torch.cat([lin.bias for lin in lins])
                if i == len(self.layers) - 2:
                    w, b = w[perm], b[perm]
                self.ws.append(w.contiguous())
                self.bs.append(b)
        self.tsc = tsc

    def start_records(self) -> None:
        """Start recording VJPs (again: a retained graph may be differentiated twice)."""
        self.deltas = [[] for _ in self.layers]  # per layer, per VJP'd point: (B, out) cotangents
        self.inputs = [[] for _ in self.layers]  # matching layer inputs
        self.points = []

    def __call__(self, z: torch.Tensor, k: int):
        """Output ``(B, C, H)`` at grid point ``k`` and what the VJP needs."""
        h = torch.addmm(self.bias_rows[k], z, self.wz_t)
        hs, acts = [h], []
        for (kind, _), w, b in zip(self.acts, self.ws, self.bs, strict=True):
            a = torch.nn.functional.silu(h) if kind == "silu" else torch.tanh(h)
            h = torch.addmm(b, a, w.t())
            hs.append(h)
            acts.append(a)
        out = torch.tanh(h) if self.final_tanh else h
        return out.view(z.size(0), self.channels, self.hidden), (k, z, hs, acts, out)

    def vjp(self, grad_out: torch.Tensor, cache, acc: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """``beta * acc + dz``; records the per-layer cotangents for ``param_grads``."""
        k, z, hs, acts, out = cache
        d = grad_out.reshape(out.shape)
        if self.final_tanh:
            d = _tanh_bwd(d, out)
        for i in range(len(self.ws) - 1, -1, -1):
            self.deltas[i + 1].append(d)
            self.inputs[i + 1].append(acts[i])
            ga = torch.mm(d, self.ws[i])
            d = _silu_bwd(ga, hs[i]) if self.acts[i][0] == "silu" else _tanh_bwd(ga, acts[i])
        self.deltas[0].append(d)
        self.inputs[0].append(z)
        self.points.append(k)
        return torch.addmm(acc, d, self.wz, beta=beta)

    def param_grads(self) -> list[torch.Tensor]:
        """Gradients of ``self.params`` summed over every recorded VJP (one matmul per layer)."""
        inv = torch.argsort(torch.as_tensor(self.perm, device=self.wz.device))
        fused = []
        for i in range(len(self.layers)):
            d, x = torch.cat(self.deltas[i]), torch.cat(self.inputs[i])
            if i == 0:
                col = d.view(len(self.points), -1, d.size(1)).sum(1)  # (points, O0)
                tsc = self.tsc[torch.as_tensor(self.points, device=d.device)].to(d.dtype)
                w, b = torch.cat([(tsc @ col).unsqueeze(1), d.t() @ x], 1), col.sum(0)
            else:
                w, b = (d.t() @ x) * self.acts[i - 1][1], d.sum(0)
            if i == len(self.layers) - 1:
                w, b = w[inv], b[inv]
            fused.append((w, b))
        self.start_records()  # free the per-step records
        grads = [[] for _ in self.layers[0]]
        for i, (w, b) in enumerate(fused):
            r = c = 0
            for h, lin in enumerate(self.layers[i]):
                o, n = lin.out_features, lin.in_features
                gw = w[r:r + o] if i == 0 else w[r:r + o, c:c + n]
                grads[h] += [gw.contiguous(), b[r:r + o].contiguous()]
                r, c = r + o, c + n
        return [g for per_head in grads for g in per_head]


def generator_mlp(vf) -> FusedMLP | None:
    """Fused drift and diffusion of ``sdegan``'s ``GeneratorSDE`` (matched by its ``f_and_g``), else None."""
    fn = getattr(type(vf), "f_and_g", None)
    if getattr(fn, "__qualname__", "") != "GeneratorSDE.f_and_g" or "f_and_g" in vars(vf) or not plain(vf):
        return None
    h, w = vf.hidden_size, vf.noise_size
    # Fused column c * H + i: drift i (c = 0), else diffusion (i, c - 1) at h + i * W + c - 1.
    perm = [i if c == 0 else h + i * w + c - 1 for c in range(1 + w) for i in range(h)]
    try:
        return FusedMLP([vf.drift_net, vf.diffusion_net], perm, 1 + w, h)
    except ValueError:
        return None


def cde_mlp(func) -> FusedMLP | None:
    """Fused net of ``sdegan``'s ``DiscriminatorCDE`` (matched by its ``forward``), else None."""
    fn = getattr(type(func), "forward", None)
    if getattr(fn, "__qualname__", "") != "DiscriminatorCDE.forward" or "forward" in vars(func) or not plain(func):
        return None
    h, c = func.hidden_size, func.channels
    try:
        return FusedMLP([func.net], [i * c + j for j in range(c) for i in range(h)], c, h)
    except ValueError:
        return None
