"""Checks and transforms of path tensors shared by the metrics.

Paths are ``(batch, time, channels)``: channel 0 is time, channels 1.. are normalised data, real data may
hold NaN where values are missing (never in channel 0).
"""

from __future__ import annotations

import contextlib

import torch

from neuralsde.data.interpolation import fill_missing  # noqa: F401  (re-exported for the metrics)
from neuralsde.errors import DataError


def check_paths(x, name: str, *, allow_nan: bool = True, min_batch: int = 1) -> torch.Tensor:
    """Return ``x`` as a floating tensor ``(batch, time, channels)`` or raise a DataError naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"{name} must be a torch.Tensor of shape (batch, time, channels), got {type(x).__name__}. "
            "Fix: pass paths as a tensor."
        )
    if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 2:
        raise DataError(
            f"{name} has shape {tuple(x.shape)}: expected (batch, time >= 2, channels >= 2) with channel "
            "0 the time. Fix: prepend the time channel and pass a batch of paths."
        )
    if x.shape[0] < min_batch:
        raise DataError(
            f"{name} holds {x.shape[0]} paths: this metric needs at least {min_batch}. Fix: pass more paths."
        )
    if not x.is_floating_point():
        x = x.float()
    if torch.isnan(x[..., 0]).any():
        raise DataError(
            f"{name} has NaN in channel 0 (time): expected observation times everywhere. "
            "Fix: fill the time channel; only data channels may be missing."
        )
    if not allow_nan and torch.isnan(x).any():
        raise DataError(
            f"{name} contains NaN: generated paths are expected to be complete. Fix: check the generator output."
        )
    if torch.isinf(x).any():
        raise DataError(f"{name} contains infinities. Fix: replace them by NaN (real) or check the generator.")
    if not (x[:, 1:, 0] > x[:, :-1, 0]).all():
        # a (time, batch, channels) tensor has one time along axis 1: its metrics came out as numbers, silently
        hint = (" It looks like (time, batch, channels). Fix: pass x.transpose(0, 1)."
                if (x[:, :, 0] == x[:, :1, 0]).all() else " Fix: sort each path by time.")
        raise DataError(f"{name}: the time channel (0) does not increase along axis 1 in every path.{hint}")
    return x


def check_same_grid(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Raise a DataError unless ``a`` and ``b`` have the same number of times and channels."""
    if a.shape[1:] != b.shape[1:]:
        raise DataError(
            f"{names[0]} has (time, channels) {tuple(a.shape[1:])} but {names[1]} has "
            f"{tuple(b.shape[1:])}: expected the same grid. Fix: sample both on the same times."
        )


def mask_like(fake: torch.Tensor, real: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``fake`` with each path's data values set to NaN where a randomly drawn ``real`` path (same grid) misses them.

    Real paths are filled before a metric that fills (the real/fake classifier, the signature MMD) sees them, and a
    filled gap is a straight line: complete generated paths differ by that alone (the OU data's 30% missing values
    let a GRU call a generator of the data's own law at 0.81). With the same missingness both are filled alike.
    """
    missing = torch.isnan(real[..., 1:])
    if not missing.any():
        return fake
    idx = torch.randint(len(real), (len(fake),), generator=generator)
    out = fake.clone()
    out[..., 1:][missing[idx.to(missing.device)].to(out.device)] = float("nan")
    return out


def time_map(reference: torch.Tensor) -> tuple[float, float]:
    """Offset and span that map the time channel of ``reference`` onto [0, 1]."""
    t0 = float(reference[..., 0].min())
    span = float(reference[..., 0].max()) - t0
    return t0, (span if span > 0 else 1.0)


def rescale_time(x: torch.Tensor, t0: float, span: float) -> torch.Tensor:
    """``x`` with channel 0 replaced by ``(t - t0) / span`` so that time and data have comparable scales."""
    return torch.cat([(x[..., :1] - t0) / span, x[..., 1:]], dim=-1)


def make_generator(seed: int | torch.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device``: ``seed`` itself when it already is one, else a fresh one seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))


def seed_int(seed: int | torch.Generator) -> int:
    """An int seed: ``seed`` itself, or one drawn from the generator (which advances it)."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(2**31 - 1, (1,), generator=seed, device=seed.device))
    return int(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the CPU RNG that module initialisation uses, restoring the caller's stream afterwards.

    Models are built on the CPU and then moved, so the CUDA RNG is neither needed nor touched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
