"""Time-dependent Ornstein-Uhlenbeck data, generated in code (the papers' first experiment).

dY = (mu t - theta Y) dt + sigma (2t/T) dW, Y0 ~ U(-1, 1), observed at t = 0, 1, ..., T-1 and simulated
with Euler-Maruyama at a finer step under a fixed seed. The diffusion does not depend on Y, so the Ito and
Stratonovich readings agree. A fraction of values is then dropped to NaN to exercise irregular sampling.
"""
from __future__ import annotations

import torch

from neuralsde.data.base import RawSeries
from neuralsde.errors import ConfigError, check_int


class OUSource:
    """Synthetic OU paths: ``load()`` gives values ``(n_paths, t_size, 1)``."""

    def __init__(self, n_paths: int = 8192, t_size: int = 64, mu: float = 0.02, theta: float = 0.1,
                 sigma: float = 0.4, sim_dt: float = 0.1, drop_fraction: float = 0.3, seed: int = 0):
        for key, value in (("n_paths", n_paths), ("t_size", t_size)):  # was a TypeError or torch.randn's dump
            check_int(f"data.source.{key}", value, f"e.g. data.source.{key}={8192 if key == 'n_paths' else 64}",
                      minimum=None)
        if n_paths < 1 or t_size < 2:
            raise ConfigError(f"data.source.n_paths={n_paths}, t_size={t_size}: need n_paths >= 1 and t_size >= 2. "
                              "Fix: increase them.")
        if not 0.0 <= drop_fraction < 1.0:
            raise ConfigError(f"data.source.drop_fraction={drop_fraction} must lie in [0, 1). Fix: e.g. 0.3.")
        substeps = round(1.0 / sim_dt)
        if substeps < 1 or abs(substeps * sim_dt - 1.0) > 1e-9:
            raise ConfigError(f"data.source.sim_dt={sim_dt} must divide 1 (one observation interval). Fix: e.g. 0.1.")
        self.__dict__.update(n_paths=n_paths, t_size=t_size, mu=mu, theta=theta, sigma=sigma, substeps=substeps,
                             drop_fraction=drop_fraction, seed=seed)

    def load(self) -> RawSeries:
        gen = torch.Generator().manual_seed(self.seed)
        h = 1.0 / self.substeps
        y = torch.rand(self.n_paths, generator=gen, dtype=torch.float64) * 2 - 1
        observed = [y]
        for k in range(self.substeps * (self.t_size - 1)):
            t = k * h
            dw = torch.randn(self.n_paths, generator=gen, dtype=torch.float64) * h ** 0.5
            y = y + (self.mu * t - self.theta * y) * h + self.sigma * (2 * t / self.t_size) * dw
            if (k + 1) % self.substeps == 0:
                observed.append(y)
        values = torch.stack(observed, dim=1).unsqueeze(-1).float()
        if self.drop_fraction > 0:
            n_drop = int(self.drop_fraction * values.numel())
            drop = torch.randperm(values.numel(), generator=gen)[:n_drop]
            values.view(-1)[drop] = float("nan")
            # A series with no observation at all carries no information: restore its first value.
            empty = torch.isnan(values).flatten(1).all(1)
            values[empty, 0, 0] = torch.stack(observed, 1)[empty, 0].float()
        times = torch.arange(self.t_size, dtype=torch.float32)
        return RawSeries(times, values, ["y"], meta={"name": "ou"}).validate("ou")
