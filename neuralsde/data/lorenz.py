"""Stochastic Lorenz system, simulated by Euler-Maruyama under a fixed seed.

dY = f(Y) dt + g(Y) dW with the classic drift (sigma=10, rho=28, beta=8/3)
    f(y) = (sigma (y2 - y1), y1 (rho - y3) - y2, y1 y2 - beta y3)
and diagonal noise, either multiplicative ``g(y) = noise_scale * y`` (as in torchsde's latent-SDE Lorenz
example, scale 0.15) or additive ``g(y) = noise_scale``. Generated in code, so no data file, licence or
cache; the datamodule normalises the values later.
"""
from __future__ import annotations

import math

import torch

from neuralsde.data.base import RawSeries
from neuralsde.errors import bad_option

NAME = "lorenz"


def lorenz_drift(y: torch.Tensor, sigma: float, rho: float, beta: float) -> torch.Tensor:
    """Lorenz vector field; y ``(N, 3)`` -> ``(N, 3)``."""
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([sigma * (y2 - y1), y1 * (rho - y3) - y2, y1 * y2 - beta * y3], dim=-1)


class LorenzSource:
    """Paths of the stochastic Lorenz system observed at ``n_times`` equally spaced times.

    Options: ``n_paths`` (default 1024), ``n_times`` observations (default 100) on ``[0, t_end]``
    (default ``t_end`` 2.0), ``dt`` the Euler-Maruyama step (default 1e-3, shrunk so that every
    observation time lies on the step grid), ``noise`` ``multiplicative`` | ``additive``,
    ``noise_scale`` (default 0.15), ``sigma``/``rho``/``beta`` (10, 28, 8/3), ``y0_scale`` (initial
    state ~ N(0, y0_scale^2) per coordinate, default 1), ``drop_fraction`` of all values set to NaN at
    random (default 0: fully observed), ``seed``.

    ``load()`` returns values ``(n_paths, n_times, 3)`` (channels y1, y2, y3) and times ``(n_times,)``.
    Simulated in float64 and returned as float32.
    """

    def __init__(self, n_paths: int = 1024, n_times: int = 100, t_end: float = 2.0, dt: float = 1e-3,
                 noise: str = "multiplicative", noise_scale: float = 0.15, sigma: float = 10.0,
                 rho: float = 28.0, beta: float = 8.0 / 3.0, y0_scale: float = 1.0, drop_fraction: float = 0.0,
                 seed: int = 0):
        if noise not in ("multiplicative", "additive"):
            raise bad_option("noise", noise, "'multiplicative' or 'additive'", "choose one of them.")
        if not 0.0 <= drop_fraction < 1.0:
            raise bad_option("drop_fraction", drop_fraction, "a number in [0, 1)", "e.g. 0.3.")
        if n_times < 2 or n_paths < 1 or t_end <= 0 or dt <= 0:
            raise bad_option("n_times/n_paths/t_end/dt", (n_times, n_paths, t_end, dt),
                             "n_times >= 2, n_paths >= 1, t_end > 0, dt > 0", "fix the values.")
        self.n_paths, self.n_times, self.t_end, self.dt = int(n_paths), int(n_times), float(t_end), float(dt)
        self.noise, self.noise_scale = noise, float(noise_scale)
        self.params = (float(sigma), float(rho), float(beta))
        self.y0_scale, self.drop_fraction, self.seed = float(y0_scale), float(drop_fraction), int(seed)

    def load(self) -> RawSeries:
        """Simulate; shapes in the class docstring."""
        gen = torch.Generator().manual_seed(self.seed)
        gap = self.t_end / (self.n_times - 1)
        substeps = max(1, math.ceil(gap / self.dt - 1e-9))  # whole steps between observations
        h = gap / substeps
        y = torch.randn(self.n_paths, 3, generator=gen, dtype=torch.float64) * self.y0_scale
        observed = [y]
        for _ in range(self.n_times - 1):
            for _ in range(substeps):
                dw = torch.randn(self.n_paths, 3, generator=gen, dtype=torch.float64) * math.sqrt(h)
                diffusion = self.noise_scale * (y if self.noise == "multiplicative" else torch.ones_like(y))
                y = y + lorenz_drift(y, *self.params) * h + diffusion * dw
            observed.append(y)
        values = torch.stack(observed, dim=1).float()  # (n_paths, n_times, 3)
        if self.drop_fraction > 0:
            # Drop entries uniformly over all values, as the OU recipe does for irregular sampling.
            n_drop = int(self.drop_fraction * values.numel())
            drop = torch.randperm(values.numel(), generator=gen)[:n_drop]
            values.view(-1)[drop] = float("nan")
            # A path with nothing observed carries no information: keep its initial state.
            empty = torch.isnan(values).flatten(1).all(1)
            values[empty, 0] = observed[0][empty].float()
        times = torch.arange(self.n_times, dtype=torch.float32) * gap
        return RawSeries(times=times, values=values, channel_names=["y1", "y2", "y3"],
                         meta={"dt": h, "noise": self.noise}).validate(NAME)
