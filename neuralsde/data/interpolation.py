"""Filling missing values by linear interpolation in time: one definition for the data module and the metrics."""
from __future__ import annotations

import torch


def fill_missing(x: torch.Tensor) -> torch.Tensor:
    """Fill NaN in ``(batch, time, channels)`` (time in channel 0) by linear interpolation in time.

    The values of ``torchcde.linear_interpolation_coeffs``, bit for bit: interior gaps are interpolated linearly in
    the time of channel 0 (in the index when the paths do not share one time grid), leading gaps are back-filled and
    trailing gaps forward-filled; a channel missing for a whole path becomes 0 (the normalised mean).
    Returns a NaN-free tensor of the same shape; ``x`` itself is returned when it has no NaN.
    """
    if not torch.isnan(x).any():
        return x
    times = x[0, :, 0]
    shared = bool((x[..., 0] == times).all())
    t = times if shared else torch.arange(x.size(1), dtype=x.dtype, device=x.device)
    rows = torch.isnan(x).flatten(1).any(1).nonzero().flatten()  # only paths with a gap: memory grows with them
    out = x.clone()
    out[rows] = _fill(x[rows], t)
    return out


def torchcde_fill(x: torch.Tensor) -> torch.Tensor:
    """``fill_missing`` through ``torchcde.linear_interpolation_coeffs`` (one Python loop per path and channel with a
    gap): the library reference the vectorised fill must equal bit for bit (tests/test_datamodule.py, bench row 11)."""
    import torchcde

    times = x[0, :, 0]
    shared = bool((x[..., 0] == times).all())
    return torchcde.linear_interpolation_coeffs(x, t=times if shared else None)


def _fill(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    missing = torch.isnan(x)
    t_size = x.size(1)
    # Vectorised over paths and channels: torchcde loops in Python over every (path, channel) with a gap, which was
    # 10 s of the default run's 75 (OU's 8192 paths, filled once at set-up) and again in every metric that fills.
    # For each entry, the nearest observed index at or before it (-1: none) and at or after it (T: none).
    index = torch.arange(t_size, device=x.device).view(1, -1, 1).expand_as(x)
    prev = torch.where(missing, -1, index).cummax(dim=1).values
    nxt = torch.where(missing, t_size, index).flip(1).cummin(dim=1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < t_size
    prev_c, next_c = prev.clamp(min=0), nxt.clamp(max=t_size - 1)
    x_prev, x_next = x.gather(1, prev_c), x.gather(1, next_c)
    # torchcde's arithmetic, operation by operation (same rounding): prev + ratio * (next - prev)
    ratio = (t[index] - t[prev_c]) / (t[next_c] - t[prev_c])
    inner = x_prev + ratio * (x_next - x_prev)
    filled = torch.where(has_prev & has_next, inner,
                         torch.where(has_prev, x_prev, torch.where(has_next, x_next, torch.zeros_like(x))))
    return torch.where(missing, filled, x)
