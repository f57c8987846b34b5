"""Decoder latent -> data channels, and the observation likelihood on observed entries only."""
from __future__ import annotations

import math

import torch
from torch import nn

from neuralsde.errors import bad_option, check_bool, check_number

LIKELIHOODS = ("gaussian", "laplace")


class Decoder(nn.Module):
    """Linear map latent ``(..., latent)`` -> mean ``(..., C)`` with a Gaussian or Laplace likelihood.

    The per-channel scale is learned (``learn_scale=True``, initialised at ``scale``) or fixed at ``scale``.
    """

    def __init__(self, latent_size: int, data_size: int, kind: str = "gaussian", scale: float = 0.1,
                 learn_scale: bool = True):
        super().__init__()
        if kind not in LIKELIHOODS:
            raise bad_option("model.likelihood.kind", kind, f"one of {LIKELIHOODS}",
                             "set model.likelihood.kind=gaussian")
        check_number("model.likelihood.scale", scale, "e.g. model.likelihood.scale=0.1", positive=True)
        check_bool("model.likelihood.learn_scale", learn_scale)
        self.kind = kind
        self.readout = nn.Linear(latent_size, data_size)
        log_scale = torch.full((data_size,), math.log(float(scale)))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, zs: torch.Tensor) -> torch.Tensor:
        """zs ``(batch, T, latent)`` -> mean ``(batch, T, C)``."""
        return self.readout(zs)

    def observation_std(self) -> torch.Tensor:
        """Per-channel standard deviation ``(C,)`` of the observation noise: the scale for a Gaussian, sqrt(2) times
        it for a Laplace."""
        scale = self.log_scale.exp()
        return scale if self.kind == "gaussian" else scale * math.sqrt(2.0)

    def add_observation_noise(self, mean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean ``(..., C)`` plus zero-mean noise drawn from the likelihood at its per-channel scale: a draw of the
        observations. Drawn on the CPU with ``generator`` (as the model's other sampling noise), then moved."""
        shape, dtype = mean.shape, mean.dtype
        if self.kind == "gaussian":
            unit = torch.randn(shape, generator=generator, dtype=dtype)
        else:  # Laplace(0, 1) is the difference of two independent Exp(1) draws
            unit = (torch.empty(shape, dtype=dtype).exponential_(generator=generator)
                    - torch.empty(shape, dtype=dtype).exponential_(generator=generator))
        return mean + unit.to(mean.device) * self.log_scale.to(dtype).exp()

    def log_likelihood(self, zs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """zs ``(batch, T, latent)``, values ``(batch, T, C)`` with NaN where missing -> ``(batch,)``: the sum of
        log-densities over observed entries. Missing entries contribute exactly zero (and no gradient)."""
        mask = ~torch.isnan(values)
        target = torch.where(mask, values, torch.zeros_like(values))  # a NaN would poison gradients even masked
        mean, log_scale = self(zs), self.log_scale.to(zs.dtype)
        z = (target - mean) / log_scale.exp()
        if self.kind == "gaussian":
            logp = -0.5 * z ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
        else:
            logp = -z.abs() - log_scale - math.log(2.0)
        return torch.where(mask, logp, torch.zeros_like(logp)).sum(dim=(1, 2))
