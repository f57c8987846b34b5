"""Splitting and normalisation: pure functions on ``RawSeries`` tensors."""
from __future__ import annotations

import torch

from neuralsde.errors import ConfigError, DataError, bad_option

NORMALIZATIONS = ("standard", "initial", "minmax", "none")
TIME_UNITS = ("index", "source")
SPLIT_BY = ("series", "time")


def check_fractions(fractions) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise bad_option("data.split_fractions", list(fractions),
                         "three non-negative fractions (train > 0) summing to 1",
                         "e.g. data.split_fractions=[0.8,0.1,0.1]")
    return fr


def split_by_series(n: int, fractions, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random split of ``n`` series indices into train/val/test index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, round(fractions[0] * n))
    n_val = round(fractions[1] * n)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def split_by_time(window_start: torch.Tensor, window_length: int, fractions) -> tuple[torch.Tensor, ...]:
    """Split windows of one long series by time; windows straddling a boundary are dropped.

    window_start: ``(N,)`` position of each window; the underlying span is cut at the given fractions.
    """
    lo = int(window_start.min())
    hi = int(window_start.max()) + window_length
    cut1 = lo + round(fractions[0] * (hi - lo))
    cut2 = cut1 + round(fractions[1] * (hi - lo))
    end = window_start + window_length
    train = (end <= cut1).nonzero().flatten()
    val = ((window_start >= cut1) & (end <= cut2)).nonzero().flatten()
    test = (window_start >= cut2).nonzero().flatten()
    return train, val, test


class Normalizer(torch.nn.Module):
    """Per-channel affine map fitted on training data only; ``inverse`` maps back to data units.

    Buffers, so it travels inside model checkpoints. Values: ``(..., C)``, on any device: the datamodule and the
    model share one normalizer, and moving the model to a GPU moves its buffers while data stays on the CPU.
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift.float())
        self.register_buffer("scale", scale.float())

    @classmethod
    def fit(cls, values: torch.Tensor, kind: str) -> "Normalizer":
        """``values`` ``(N, T, C)``. ``initial``: mean and standard deviation of the first time only, as the paper's OU
        code normalises (its comment: the initial condition is learnt better so); later times may lie far outside."""
        where, fix = "in the training split", "drop that channel or change data.split_fractions"
        if kind == "initial":
            values, kind, where = values[:, :1], "standard", "at the first time of the training split"
            fix += ", or set data.normalize=standard"
        flat = values.reshape(-1, values.size(-1)).double()  # float32 squares overflow above 1.8e19: scale inf
        c = flat.size(-1)
        if kind == "none":
            return cls(torch.zeros(c), torch.ones(c))
        if kind == "standard":
            shift = torch.nanmean(flat, dim=0)
            scale = torch.sqrt(torch.nanmean((flat - shift) ** 2, dim=0))
        elif kind == "minmax":
            finite = torch.where(torch.isnan(flat), torch.tensor(float("inf")), flat)
            shift = finite.min(dim=0).values
            scale = torch.where(torch.isnan(flat), torch.tensor(float("-inf")), flat).max(dim=0).values - shift
        else:
            raise bad_option("data.normalize", kind, f"one of {NORMALIZATIONS}", "set data.normalize=standard")
        if torch.isnan(shift).any():
            raise DataError(f"A channel has no observed value {where}. Fix: {fix}.")
        return cls(shift, torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.shift.to(values.device)) / self.scale.to(values.device)

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.scale.to(values.device) + self.shift.to(values.device)


def time_channel(times: torch.Tensor, unit: str) -> torch.Tensor:
    """Values of the time channel ``(T,)``: the observation index, or the source's times in units of their
    median gap."""
    if unit == "index":
        return torch.arange(times.numel(), dtype=torch.float32)
    if unit == "source":
        times = times.double()
        gap = torch.median(times[1:] - times[:-1])
        return ((times - times[0]) / gap).float()
    raise bad_option("data.time_unit", unit, f"one of {TIME_UNITS}", "set data.time_unit=index")


def check_batch_size(batch_size: int, n_train: int) -> None:
    if batch_size < 1:
        raise bad_option("data.batch_size", batch_size, "a positive integer", "e.g. data.batch_size=128")
    if batch_size > n_train:
        raise ConfigError(f"data.batch_size={batch_size} is larger than the training set ({n_train} series). "
                          f"Fix: set data.batch_size<={n_train} or use more data.")
