"""Filling missing values by linear interpolation in time: one definition for the data module and the metrics."""
from __future__ import annotations

import torch
import torchcde


def fill_missing(x: torch.Tensor) -> torch.Tensor:
    """Fill NaN in ``(batch, time, channels)`` (time in channel 0) by linear interpolation in time.

    Uses ``torchcde.linear_interpolation_coeffs``: interior gaps are interpolated linearly in the time of
    channel 0 (in the index when the paths do not share one time grid), leading gaps are back-filled and
    trailing gaps forward-filled; a channel missing for a whole path becomes 0 (the normalised mean).
    Returns a NaN-free tensor of the same shape; ``x`` itself is returned when it has no NaN.
    """
    if not torch.isnan(x).any():
        return x
    times = x[0, :, 0]
    shared = bool((x[..., 0] == times).all())
    # torchcde loops in Python over paths with NaN, so only those paths go through it.
    rows = torch.isnan(x).flatten(1).any(1).nonzero().flatten()
    out = x.clone()
    out[rows] = torchcde.linear_interpolation_coeffs(x[rows], t=times if shared else None)
    return out
