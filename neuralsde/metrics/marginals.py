"""Marginal distributions and dependence structure: per-time distances, autocorrelation, cross-correlation.

All compare real and fake paths on the same time grid (by index), over data channels 1..; NaN in real
values are ignored (left out of every statistic), not interpolated.
"""

from __future__ import annotations

import torch

from neuralsde.errors import DataError, bad_option
from neuralsde.metrics._paths import check_paths, check_same_grid

MARGINAL_KINDS = ("w1", "ks")


def _distances_1d(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """1-Wasserstein and Kolmogorov–Smirnov distances between the empirical laws of 1-D samples a and b."""
    a, b = torch.sort(a.double())[0], torch.sort(b.double())[0]
    points = torch.sort(torch.cat([a, b]))[0]
    # both CDFs are constant between consecutive pooled points, so W1 = sum |F_a - F_b| * gap, KS = max.
    cdf_a = torch.searchsorted(a, points, right=True).double() / len(a)
    cdf_b = torch.searchsorted(b, points, right=True).double() / len(b)
    diff = (cdf_a - cdf_b).abs()
    return float((diff[:-1] * points.diff()).sum()), float(diff.max())


def marginal_distance(real: torch.Tensor, fake: torch.Tensor, *, kind: str = "w1") -> float:
    """Mean over times and data channels of the distance between real and fake marginals.

    real ``(m, T, C)`` (may hold NaN, ignored), fake ``(n, T, C)``. ``kind``: "w1" (1-Wasserstein, in the
    data's normalised unit) or "ks" (Kolmogorov–Smirnov statistic, in [0, 1]). A (time, channel) with no
    observed real value is skipped.
    """
    if kind not in MARGINAL_KINDS:
        raise bad_option("kind", kind, f"one of {MARGINAL_KINDS}", 'use "w1" or "ks"')
    real, fake = check_paths(real, "real"), check_paths(fake, "fake", allow_nan=False)
    check_same_grid(real, fake, ("real", "fake"))
    real, fake = real[..., 1:].cpu(), fake[..., 1:].cpu()
    values = []
    for t in range(real.shape[1]):
        for c in range(real.shape[2]):
            col = real[:, t, c]
            col = col[~torch.isnan(col)]
            if len(col):
                values.append(_distances_1d(col, fake[:, t, c])[0 if kind == "w1" else 1])
    if not values:
        raise DataError("real has no observed data value at all: expected some non-NaN values. Fix: check the data.")
    return sum(values) / len(values)


def autocorrelation(paths: torch.Tensor, max_lag: int | None = None) -> torch.Tensor:
    """Autocorrelation ``(max_lag + 1, C - 1)`` of the data channels of ``paths`` ``(batch, T, C)``.

    Per channel, with mean and variance pooled over batch and time, ``acf[k] = mean over (path, t) of
    (x_t - mean)(x_{t+k} - mean) / var``, averaged over pairs where both values are observed (NaN ignored).
    Lag 0 is 1. ``max_lag`` defaults to ``T // 2``.
    """
    x = paths[..., 1:].double()
    length = x.shape[1]
    max_lag = length // 2 if max_lag is None else max_lag
    if not 1 <= max_lag < length:
        raise bad_option(
            "max_lag",
            max_lag,
            f"an int in [1, {length - 1}] for {length} times",
            "use a smaller lag or leave it as None",
        )
    mean = torch.nanmean(x, dim=(0, 1))
    centred = x - mean
    var = torch.nanmean(centred**2, dim=(0, 1)).clamp_min(1e-12)
    acfs = [torch.nanmean(centred[:, k:] * centred[:, : length - k], dim=(0, 1)) / var for k in range(max_lag + 1)]
    return torch.stack(acfs)


def acf_error(real: torch.Tensor, fake: torch.Tensor, *, max_lag: int | None = None) -> float:
    """Mean over lags 1..max_lag and data channels of |acf_real - acf_fake| (see ``autocorrelation``).

    real ``(m, T, C)`` (NaN ignored), fake ``(n, T, C)``. A lag with no observed real pair is skipped.
    """
    real, fake = check_paths(real, "real"), check_paths(fake, "fake", allow_nan=False)
    check_same_grid(real, fake, ("real", "fake"))
    diff = (autocorrelation(real, max_lag)[1:] - autocorrelation(fake, max_lag)[1:].to(real.device)).abs()
    return float(torch.nanmean(diff))


def cross_correlation(paths: torch.Tensor) -> torch.Tensor:
    """Correlation matrix ``(C - 1, C - 1)`` of the data channels of ``paths`` ``(batch, T, C)``, pooled over
    batch and time; each pair uses the (path, time) points where both channels are observed."""
    x = paths[..., 1:].double().flatten(0, 1)
    channels = x.shape[1]
    out = torch.eye(channels, dtype=x.dtype, device=x.device)
    for i in range(channels):
        for j in range(i + 1, channels):
            both = ~torch.isnan(x[:, i]) & ~torch.isnan(x[:, j])
            a, b = x[both, i], x[both, j]
            a, b = a - a.mean(), b - b.mean()
            out[i, j] = out[j, i] = (a * b).mean() / ((a**2).mean() * (b**2).mean()).sqrt().clamp_min(1e-12)
    return out


def cross_corr_error(real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """Mean |corr_real - corr_fake| over channel pairs (upper triangle of ``cross_correlation``).

    real ``(m, T, C)`` (NaN ignored), fake ``(n, T, C)``. ``None`` when there is a single data channel.
    """
    real, fake = check_paths(real, "real"), check_paths(fake, "fake", allow_nan=False)
    check_same_grid(real, fake, ("real", "fake"))
    channels = real.shape[2] - 1
    if channels < 2:
        return None
    iu = torch.triu_indices(channels, channels, offset=1)
    diff = (cross_correlation(real).cpu() - cross_correlation(fake).cpu())[iu[0], iu[1]].abs()
    return float(torch.nanmean(diff))
