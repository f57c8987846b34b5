"""MLP heads evaluated as one wide network, with a hand-written VJP (no autograd engine per step).

The heads are ``neuralsde.nn.MLP``-shaped ``nn.Sequential``s (Linear, activation, ..., Linear[, Tanh]) that
all read ``[t * scale, z]`` (or ``z`` alone: ``timed=False``). They are fused: first layers stacked, later
layers block-diagonal (zero blocks add exact zeros), output rows permuted so the result is ``(B, C, H)``,
control channel first. Same parameters, same maths; only rounding differs from the unfused modules.

A final tanh is evaluated as ``tanh(x) = 2 sigmoid(2 x) - 1`` (the 2 folded into the last layer's weights):
on CPU ``torch.tanh`` costs several times ``torch.sigmoid`` plus one in-place affine op (a one-off timing,
2026-11-30: 30 vs 9 us for 128 x 64 floats). Its VJP is ``tanh_backward`` of the result, as autograd's.

Evaluations that will be differentiated are *recorded* in a slot of fixed-size chunk buffers (written in
place through ``out=``); parameter gradients are summed with one matmul per layer per full chunk (``mlp_sums``),
so the backward pass holds ``O(chunk)`` records, not ``O(steps)``. One spare slot (``cache``) holds an evaluation
whose VJP goes to the state only (midpoint's first adjoint stage). Plain evaluations (``evaluate``) record nothing.
The solver loops call straight-line forms of these methods (``mlp_kernels``).
"""
from __future__ import annotations

import torch

from neuralsde.fast import mlp_kernels, mlp_sums
from neuralsde.fast.heads import _BWD, _FWD, parse, plain
from neuralsde.fast.records import Records, chunk_size

CHUNK = None  # recorded evaluations per parameter-gradient matmul; None: as many as fit in records.CACHE_BYTES


class FusedMLP:
    """Heads ``nets`` sharing the input ``[t * scale, z]``; output ``(B, C, H)`` with ``C * H`` outputs.

    ``perm[i]``: which output of the concatenated heads goes to fused output column ``i``.
    """

    def __init__(self, nets, perm: list[int], channels: int, hidden: int, timed: bool = True):
        parsed = [parse(n) for n in nets]
        if any(p is None for p in parsed) or len({(len(p[0]), tuple(p[1]), p[2]) for p in parsed}) != 1:
            raise ValueError("heads are not MLPs of one structure")
        self.layers = [[p[0][i] for p in parsed] for i in range(len(parsed[0][0]))]
        self.acts, self.final_tanh = parsed[0][1], parsed[0][2]
        self.act_fns = [_FWD[kind] for kind, _ in self.acts]
        self.bwd_fns = [_BWD[kind] for kind, _ in self.acts]
        self.bwd_reads_input = [kind == "silu" for kind, _ in self.acts]  # silu' needs its input, tanh' its output
        self.params = [t for p in parsed for lin in p[0] for t in (lin.weight, lin.bias)]
        self.perm, self.channels, self.hidden, self.timed = perm, channels, hidden, timed
        n_out = sum(lin.out_features for lin in self.layers[-1])
        if sorted(perm) != list(range(n_out)) or n_out != channels * hidden:
            raise ValueError("bad output permutation")
        self._blocks_at = [None] + [mlp_sums.head_blocks(self, i) for i in range(1, len(self.layers))]
        self.rec = None
        self._records = {}  # (batch, chunk, dtype, device, inference mode) -> Records
        self._consts = {}  # per (dtype, device): index tensors and constants that do not change with the weights

    def layer_scale(self, i: int) -> float:
        """Factor between layer ``i``'s fused weights and the modules' (the previous LipSwish's scale)."""
        return self.acts[i - 1][1] if i else 1.0

    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._consts:
            perm = torch.as_tensor(self.perm, device=like.device)
            # sum over the C channels of (B, C * H) as one GEMM: faster on CPU than bmm or sum(1) at these sizes
            q = torch.eye(self.hidden, dtype=like.dtype, device=like.device).repeat(self.channels, 1)
            minus_one = torch.tensor(-1.0, dtype=like.dtype, device=like.device)  # a Python float costs a copy
            self._consts[key] = perm, torch.argsort(perm), q, minus_one
        return self._consts[key]

    def prepare(self, tsc: torch.Tensor) -> None:
        """Fuse the current weights; ``tsc`` ``(M,)`` the scaled time of each evaluation time index.

        VJPs use the fused weights; the forward uses them with the last layer doubled for ``sigmoid(2 h)``.
        """
        last = len(self.layers) - 1
        two = 2.0 if self.final_tanh else 1.0
        with torch.no_grad():
            w0 = torch.cat([lin.weight for lin in self.layers[0]])
            b0 = torch.cat([lin.bias for lin in self.layers[0]])
            perm, self.inv_perm, self.q, self.minus_one = self._constants(w0)
            if last == 0:
                w0, b0 = w0[perm], b0[perm]
            self.wz = (w0[:, 1:] if self.timed else w0).contiguous()  # (O0, H)
            f0 = two if last == 0 else 1.0
            if self.timed:
                bias = torch.addr(b0 * f0, tsc.to(b0.dtype), w0[:, 0], alpha=f0)  # b0 + t_k * w_t per k
            else:
                bias = (b0 * f0).expand(tsc.numel(), -1)
            self.wz_t, self.bias_t = (self.wz * f0).t(), bias.unbind(0)
            self.ws, self.bs, self.ws_t = [], [], []
            for i, lins in enumerate(self.layers[1:], start=1):
                w = torch.block_diag(*[lin.weight for lin in lins]).mul_(self.layer_scale(i))
                b = torch.cat([lin.bias for lin in lins])
                if i == last:
                    w, b = w[perm], b[perm].mul_(two)
                self.ws.append(w)
                self.bs.append(b)
                self.ws_t.append((w * two).t() if i == last and self.final_tanh else w.t())
        self.tsc = tsc

    # ---------------------------------------------------------------------------------------- records

    def start_records(self, batch: int, like: torch.Tensor, points: int, min_size: int = 1) -> None:
        """Start recording up to ``points`` evaluations (again: a retained graph may be differentiated twice), in
        chunks of at least ``min_size`` slots (where the caller carries that many results across chunks)."""
        widths = [self.wz.size(1)] + [w.size(0) for w in self.ws] * 3 + [self.wz.size(0)] * 3
        size = max(min_size, chunk_size(batch * sum(widths) * like.element_size(), points, CHUNK))
        key = (batch, size, like.dtype, like.device, torch.is_inference_mode_enabled())
        rec = self._records.get(key)
        if rec is None:  # buffers and per-slot views (a few hundred small ops): made once per shape
            rec = self._records[key] = Records(self, batch, like, size)
        self.rec, self.acc = rec, None

    def z_slot(self, s: int) -> torch.Tensor:
        """Buffer for the input of the evaluation recorded in slot ``s``: write it there with ``out=``."""
        return self.rec.slots[s][0]

    def flush(self, n: int) -> None:
        """Sum the parameter gradients of the evaluations recorded in slots ``0 .. n - 1`` (``mlp_sums.flush``)."""
        mlp_sums.flush(self, n)

    def param_grads(self) -> list[torch.Tensor]:
        """Gradients of ``self.params`` summed over every flushed VJP."""
        return mlp_sums.param_grads(self)

    # ------------------------------------------------------------------------------------ evaluate, VJP

    def evaluate(self, z: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The field ``(B, C, H)`` at evaluation time index ``k``, nothing recorded; written into ``out``
        ``(B, C * H)`` if given."""
        batch = z.size(0)
        h = torch.addmm(self.bias_t[k], z, self.wz_t)
        for act, b, w_t in zip(self.act_fns, self.bs, self.ws_t, strict=True):
            h = torch.addmm(b, act(h), w_t)
        if self.final_tanh:
            h = torch.sigmoid(h) if out is None else torch.sigmoid(h, out=out)
            torch.add(self.minus_one, h, alpha=2, out=h)
        elif out is not None:
            h = out.copy_(h)
        return h.view(batch, self.channels, self.hidden)

    def record(self, z: torch.Tensor, k: int, slot: int) -> torch.Tensor:
        """The field as ``evaluate``, recorded in ``slot`` (``z`` may already be ``z_slot(slot)``)."""
        r = self.rec
        zs, outs, acts, out, _, out3 = r.slots[slot]
        r.times[slot] = k
        if z is not zs and slot != r.cache:  # the cache slot's input is never summed
            zs.copy_(z)
        h = torch.addmm(self.bias_t[k], z, self.wz_t, out=outs[0])
        for i, act in enumerate(self.act_fns):
            h = torch.addmm(self.bs[i], act(h, out=acts[i]), self.ws_t[i], out=outs[i + 1])
        if self.final_tanh:
            torch.add(self.minus_one, torch.sigmoid(h, out=out), alpha=2, out=out)
        return out3

    def evaluator(self):
        """``evaluate`` with the current weights bound once per solve (``mlp_kernels.evaluator``)."""
        return mlp_kernels.evaluator(self)

    def kernels(self):
        """``(record, vjp)`` for the solver loops, bound once per solve (``mlp_kernels.kernels``)."""
        return mlp_kernels.kernels(self)

    def vjp(self, grad: torch.Tensor, acc: torch.Tensor | None = None, *, slot: int,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """``acc + dz`` (into ``out`` if given) for the cotangent ``grad`` ``(B, C, H)`` of the field
        evaluated in ``slot``, recording the cotangents its parameter gradients need (the ``cache`` slot's are
        never summed)."""
        _, outs, acts, field, ds, _ = self.rec.slots[slot]
        last = len(self.ws)
        d = grad.view(grad.size(0), -1)
        d = _BWD["tanh"](d, field, grad_input=ds[last]) if self.final_tanh else ds[last].copy_(d)
        for i in range(last - 1, -1, -1):
            d = self.bwd_fns[i](torch.mm(d, self.ws[i]), outs[i] if self.bwd_reads_input[i] else acts[i],
                                grad_input=ds[i])
        if acc is None:
            return torch.mm(d, self.wz, out=out)
        return torch.addmm(acc, d, self.wz, out=out)


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


# CDE vector fields ``(t, z) -> net(...).view(B, H, C)`` the fused path knows, by their forward: whether the
# net reads ``[t * time_scale, z]`` (sdegan's discriminator) or ``z`` alone (the latent SDE's CDE encoder)
_CDE_FIELDS = {("sdegan.components.discriminator", "DiscriminatorCDE.forward"): True,
               ("latent_sde.components.encoder", "_CDEFunc.forward"): False}


def cde_mlp(func) -> FusedMLP | None:
    """Fused net of a CDE field in ``_CDE_FIELDS`` (matched by its ``forward``), else None."""
    fn = getattr(type(func), "forward", None)
    timed = _CDE_FIELDS.get((getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")))
    if timed is None or "forward" in vars(func) or not plain(func):
        return None
    h, c = func.hidden_size, func.channels
    try:
        return FusedMLP([func.net], [i * c + j for j in range(c) for i in range(h)], c, h, timed)
    except ValueError:
        return None
