"""Encoders of observed paths (missing values allowed) into a context sequence and q(z0).

Both read the NaN-filled path plus a per-channel observation mask, so a missing value is distinguishable from
an interpolated one, and run backwards in time: the context at index ``i`` summarises observations ``i..T-1``,
what the posterior drift needs to steer towards the future data.
"""
from __future__ import annotations

import torch
import torchcde
from torch import nn

from neuralsde.brownian import ZeroBrownian
from neuralsde.errors import bad_option, check_int
from neuralsde.nn import MLP
from neuralsde.solver import SolverConfig

ENCODER_KINDS = ("gru", "cde")
# How the observation mask reaches the encoder. indicator: 1 observed, 0 missing. cumulative: the observations counted
# from the end (the encoder reads backwards) over T - 1, on the time channel's scale (up to T / (T - 1) where every
# value is observed): a CDE responds to its control's increments, and an indicator's are a +-1 jump at every gap's
# edge, which on lorenz with drop_fraction=0.5 grew the CDE's state so far that at initialisation the posterior SDE
# diverged (path KL 1e3-2e7 per path against about 1 with the count, as torchcde's irregular-data example feeds the
# mask).
# auto: indicator for the GRU, cumulative for the CDE.
MASK_KINDS = ("auto", "indicator", "cumulative")


def encoder_inputs(paths: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """paths (NaN where missing), filled: ``(batch, T, 1 + C)`` -> ``(batch, T, 1 + 2C)``:
    time, filled values, observation mask (1 observed, 0 missing)."""
    mask = (~torch.isnan(paths[..., 1:])).to(filled.dtype)
    # torchcde fills an all-missing channel with zeros; nan_to_num guards other fillers.
    return torch.cat([torch.nan_to_num(filled), mask], dim=-1)


class Encoder(nn.Module):
    """``(paths, filled)`` each ``(batch, T, 1 + C)`` -> context ``(batch, T, context_size)``,
    q(z0) mean and log-std ``(batch, latent_size)`` each.

    kind=gru: a GRU over the reversed sequence. kind=cde: a neural CDE driven by the linear interpolation of the
    reversed sequence, solved with the framework's solver (any method, adjoint or not; ``backend=fast``:
    ``neuralsde.fast``'s CDE solvers, same numbers as torchcde's).
    """

    def __init__(self, data_size: int, context_size: int, latent_size: int, t_size: int, kind: str = "gru",
                 hidden_size: int = 32, num_layers: int = 1, solver: SolverConfig | None = None,
                 mask: str = "indicator"):
        # mask's default is what encoders read before the option existed, so their checkpoints compute as they did;
        # configs/model/latent_sde.yaml sets auto.
        super().__init__()
        if kind not in ENCODER_KINDS:
            raise bad_option("model.encoder.kind", kind, f"one of {ENCODER_KINDS}", "set model.encoder.kind=gru")
        if mask not in MASK_KINDS:
            raise bad_option("model.encoder.mask", mask, f"one of {MASK_KINDS}", "set model.encoder.mask=auto")
        self.mask = ("cumulative" if kind == "cde" else "indicator") if mask == "auto" else mask
        for key, value, example in (("hidden_size", hidden_size, 32), ("num_layers", num_layers, 1)):
            check_int(f"model.encoder.{key}", value, f"e.g. model.encoder.{key}={example}")
        self.kind, self.hidden_size, self.solver = kind, int(hidden_size), solver or SolverConfig()
        self.data_size = data_size
        self.time_scale = 1.0 / max(t_size - 1, 1)
        in_size = 1 + 2 * data_size
        if kind == "gru":
            self.rnn = nn.GRU(in_size, hidden_size, num_layers=num_layers, batch_first=True)
        else:
            self.initial = nn.Linear(in_size, hidden_size)
            self.cde_func = _CDEFunc(in_size, hidden_size, hidden_size, num_layers)
        self.to_context = nn.Linear(hidden_size, context_size)
        self.to_qz0 = nn.Linear(context_size, 2 * latent_size)

    def forward(self, paths: torch.Tensor, filled: torch.Tensor):
        x = encoder_inputs(paths, filled)
        mask = x[..., 1 + self.data_size:]
        if self.mask == "cumulative":
            mask = mask.flip(1).cumsum(1).flip(1) * self.time_scale
        x = torch.cat([x[..., :1] * self.time_scale, x[..., 1:1 + self.data_size], mask], dim=-1).flip(1)  # reversed
        hidden = self._run(x).flip(1)  # (batch, T, hidden), forward time order again
        context = self.to_context(hidden)
        mean, log_std = self.to_qz0(context[:, 0]).chunk(2, dim=-1)
        return context, mean, log_std

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gru":
            return self.rnn(x)[0]
        # Reversed time decreases; the CDE is driven by the reversed index instead (its time is an input channel).
        ts = torch.arange(x.size(1), device=x.device, dtype=x.dtype)
        s = self.solver
        if s.backend == "fast":  # the same solve as below without torchsde's per-step overhead
            from neuralsde.fast.cde import fast_cdeint
            from neuralsde.fast.midpoint import midpoint_cdeint
            solve = fast_cdeint if s.method == "reversible_heun" else midpoint_cdeint
            return solve(self.cde_func, self.initial(x[:, 0]), x, ts, dt=s.dt, adjoint=s.adjoint).transpose(0, 1)
        coeffs = torchcde.linear_interpolation_coeffs(x)  # no NaN here: the path was filled, mask is 0/1
        path = torchcde.LinearInterpolation(coeffs, t=ts)
        kwargs = dict(method=s.method, backend="torchsde", dt=s.dt,
                      bm=ZeroBrownian((x.size(0), 1), x.dtype, x.device))
        if s.adjoint:
            kwargs.update(adjoint_method=s.adjoint_method, adjoint_params=(coeffs,) + tuple(self.cde_func.parameters()))
        return torchcde.cdeint(path, self.cde_func, self.initial(x[:, 0]), ts, adjoint=s.adjoint, **kwargs)


class _CDEFunc(nn.Module):
    """CDE vector field ``z (batch, hidden) -> (batch, hidden, channels)``, tanh-bounded."""

    def __init__(self, channels: int, hidden_size: int, mlp_size: int, num_layers: int):
        super().__init__()
        self.hidden_size, self.channels = hidden_size, channels
        self.net = MLP(hidden_size, hidden_size * channels, mlp_size, num_layers, tanh=True)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.size(0), self.hidden_size, self.channels)
