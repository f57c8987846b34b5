"""Row 4: gradient accuracy of the adjoint vs direct backpropagation (same Brownian sample), and of both vs a
fine-step reference. Not a timing row."""
from __future__ import annotations

import torch
import torchsde

from neuralsde.brownian import make_brownian
from neuralsde.solver import SolverConfig, sdeint
from sdegan.components.generator import GeneratorSDE

METHODS = ("reversible_heun", "midpoint", "euler_heun")


class CastBrownian(torchsde.BaseBrownian):
    """A float64 Brownian motion served in another dtype, so float32 solves see the very same sample."""

    def __init__(self, bm, dtype):
        super().__init__()
        self.bm, self._dtype = bm, dtype

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return self.bm(ta, tb).to(self._dtype)

    def __repr__(self):
        return f"CastBrownian({self.bm!r}, {self._dtype})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self.bm.device)
    shape = property(lambda self: self.bm.shape)
    levy_area_approximation = property(lambda self: "none")


def _flat_grads(sde, y0):
    return torch.cat([p.grad.flatten().double() for p in sde.parameters()] + [y0.grad.flatten().double()])


def gradients(sde64, y0_64, weights64, bm64, steps: int, method: str, dtype, adjoint: bool, dt: float = 1.0):
    """Gradients (parameters and ``y0``, flattened, float64) of ``sum(weights * ys)`` for the solve of ``sde64``
    cast to ``dtype`` on ``ts = 0..steps``, step ``dt``, driven by ``bm64`` (shared sample)."""
    sde = GeneratorSDE(sde64.hidden_size, sde64.noise_size, 16, 1, sde64.time_scale).to(dtype)
    sde.load_state_dict(sde64.state_dict())
    y0 = y0_64.detach().to(dtype).requires_grad_(True)
    ts = torch.arange(steps + 1, dtype=dtype)
    bm = bm64 if dtype == torch.float64 else CastBrownian(bm64, dtype)
    cfg = SolverConfig(method=method, adjoint=adjoint, dt=dt)
    ys = sdeint(sde, y0, ts, cfg, bm=bm, adjoint_params=tuple(sde.parameters()) + (y0,))  # (batch, T, hidden)
    (ys * weights64.to(dtype)).sum().backward()
    return _flat_grads(sde, y0)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def gradient_errors(steps: int, methods=METHODS, dtypes=(torch.float32, torch.float64), batch: int = 16,
                    fine: int | None = 16, seed: int = 0) -> dict:
    """Relative errors ``{(method, dtype): {"adjoint_vs_direct", "direct_vs_ref", "adjoint_vs_ref"}}``.

    The reference is midpoint in float64, direct backpropagation, step ``1 / fine``. The Brownian Interval is one
    object queried by every solve: its values at points already queried stay fixed when finer queries split
    its intervals (Brownian bridges conditioned on them), so all solves share one path. A fresh interval with
    the same entropy but a different query order would give a different (equally valid) path.
    """
    torch.manual_seed(seed)
    sde64 = GeneratorSDE(16, 3, 16, 1, time_scale=1.0 / steps).double()
    y0 = 0.5 * torch.randn(batch, 16, dtype=torch.float64)
    weights = torch.randn(batch, steps + 1, 16, dtype=torch.float64) / steps
    bm = make_brownian("interval", 0.0, float(steps), (batch, 3), 1.0, seed + 1, torch.float64, "cpu")
    out = {}
    for method in methods:
        for dtype in dtypes:
            direct = gradients(sde64, y0, weights, bm, steps, method, dtype, adjoint=False)
            adj = gradients(sde64, y0, weights, bm, steps, method, dtype, adjoint=True)
            out[(method, dtype)] = {"adjoint_vs_direct": rel(adj, direct), "direct": direct, "adjoint": adj}
    if fine:
        coarse_w = torch.stack([bm(float(k), float(k + 1)) for k in range(steps)])
        ref = gradients(sde64, y0, weights, bm, steps, "midpoint", torch.float64, adjoint=False, dt=1.0 / fine)
        fine_w = torch.stack([bm(k / fine, (k + 1) / fine) for k in range(steps * fine)]).view(steps, fine, batch, 3)
        path_gap = float((fine_w.sum(1) - coarse_w).abs().max())
        for v in out.values():
            v["direct_vs_ref"], v["adjoint_vs_ref"] = rel(v["direct"], ref), rel(v["adjoint"], ref)
        out["path_check"] = path_gap
    for v in out.values():
        if isinstance(v, dict):
            v.pop("direct"), v.pop("adjoint")
    return out


def run(ctx) -> list[dict]:
    # Not a timing row: one thread, because tiny ops on several threads of a loaded machine crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(ctx)
    finally:
        torch.set_num_threads(threads)


def _rows(ctx) -> list[dict]:
    rows = []
    sizes, fine = ((32,), 8) if ctx.quick else ((32, 256), 16)
    for steps in sizes:
        res = gradient_errors(steps, fine=fine)
        gap = res.pop("path_check")
        for (method, dtype), v in res.items():
            name = str(dtype).replace("torch.", "")
            rows.append({"what": f"{method} {name}, {steps} steps: rel. grad error adjoint vs direct; "
                                 f"direct vs ref; adjoint vs ref",
                         "result": f"{v['adjoint_vs_direct']:.1e}; {v['direct_vs_ref']:.1e}; "
                                   f"{v['adjoint_vs_ref']:.1e}",
                         "paper": "reversible Heun adjoint exact to float precision" if method == "reversible_heun"
                         else "", "data": v,
                         "note": (f"reference: midpoint float64 direct, dt=1/{fine}, same Brownian path "
                                  f"(max gap of its increments on the coarse grid: {gap:.1e})")
                         if (method, dtype) == (METHODS[0], torch.float32) else ""})
    return rows
