"""Row 9: on the fast backend, each solver step contracts the field ``F`` ``(batch, channels, hidden)`` with its
control (``[dt, dW]`` for the generator, ``dX`` for the discriminator). The contraction is chosen by shape
(``neuralsde.fast.fused.contraction_mode``); this row times a full SDE-GAN step with that choice against the
channel-summing GEMM everywhere (the choice before), at each experiment's model and batch sizes.

The paths are synthetic with the experiments' shapes (channels and length of their datasets), so the row needs no
dataset; the contraction's cost depends only on the shapes.
"""
from __future__ import annotations

import torch
from _bench_utils import bare_optimizers, compose, fmt_ratio, interleaved, ratio, sdegan_step

# data channels and path length of each experiment's dataset (see configs/data/*)
SHAPES = {"ou_sdegan": (1, 64), "ou_sdegan_paper": (1, 64), "air_quality_sdegan": (6, 24),
          "stocks_sdegan": (6, 24), "energy_sdegan": (26, 24)}


def build_at_sizes(ctx, name: str):
    """``(SDEGAN, real batch)`` with experiment ``name``'s model, solver and batch size, on synthetic paths."""
    import hydra
    from omegaconf import OmegaConf

    from neuralsde.data.preprocessing import Normalizer
    from neuralsde.solver import SolverConfig

    cfg = compose([f"experiment={name}"])
    channels, length = SHAPES[name]
    batch = 8 if ctx.smoke else int(cfg.data.batch_size)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, times=torch.arange(length, dtype=torch.float32),
                                    normalizer=Normalizer(torch.zeros(channels), torch.ones(channels)),
                                    solver=SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True)),
                                    _convert_="all").to(ctx.device)
    values = torch.randn(batch, length, channels, device=ctx.device).cumsum(1) * 0.1
    times = torch.arange(length, dtype=torch.float32, device=ctx.device).view(1, -1, 1).expand(batch, -1, 1)
    return model, torch.cat([times, values], -1)


def _modes(model, batch: int) -> str:
    from neuralsde.fast.fused import contraction_mode
    g, d = model.generator.sde, model.discriminator.func
    gen = contraction_mode(batch, 1 + g.noise_size, g.hidden_size, model.device)
    disc = contraction_mode(2 * batch, d.channels, d.hidden_size, model.device)
    return f"generator {gen}, discriminator {disc}"


def run(ctx) -> list[dict]:
    import neuralsde.fast.fused as fused

    rows = []
    names = ["ou_sdegan"] if ctx.quick else list(SHAPES)
    for name in names:
        model, real = build_at_sizes(ctx, name)
        opts = bare_optimizers(model)

        def step(mode, model=model, opts=opts, real=real):
            def fn():
                fused.CONTRACTION = mode
                sdegan_step(model, opts, real)
            return fn
        try:
            t = interleaved({"gemm": step("gemm"), "by_shape": step(None)}, reps=3 if ctx.quick else 12,
                            device=ctx.device, budget_s=10 if ctx.quick else 40)
        finally:
            fused.CONTRACTION = None
        r = ratio(t["gemm"], t["by_shape"])
        g = model.generator.sde
        rows.append({"what": f"{name} sizes (batch {real.size(0)}, {real.size(-1) - 1} data channels, noise "
                             f"{g.noise_size}, hidden {g.hidden_size}): SDE-GAN step with the channel-summing GEMM "
                             "/ with the contraction chosen by shape",
                     "result": fmt_ratio(r), "paper": "no target (1.0x where the GEMM is kept)", "data": r,
                     "note": _modes(model, real.size(0))})
    return rows
