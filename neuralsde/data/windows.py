"""Cutting one long series into windows, shared by the windowed sources."""
from __future__ import annotations

import torch

from neuralsde.errors import DataError


def sliding_windows(series: torch.Tensor, length: int, stride: int, what: str = "series"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``length`` consecutive points every ``stride`` points, in time order.

    series: ``(L, C)``. Returns ``windows (N, length, C)`` (a copy) and ``starts (N,)`` int64, the index
    in ``series`` of each window's first point. A trailing remainder shorter than ``length`` is dropped.
    """
    if length < 2 or stride < 1:
        raise DataError(f"{what}: window_length={length} and stride={stride} are not valid: expected "
                        "window_length >= 2 and stride >= 1. Fix: change the data options.")
    n_points = series.shape[0]
    if n_points < length:
        raise DataError(f"{what}: the series has {n_points} points, shorter than window_length={length}. "
                        f"Fix: use window_length <= {n_points}.")
    windows = series.unfold(0, length, stride).permute(0, 2, 1).contiguous()
    starts = torch.arange(windows.shape[0], dtype=torch.int64) * stride
    return windows, starts


def nonempty(windows: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: True where a window ``(N, T, C)`` has at least one observed (non-NaN) value."""
    return (~torch.isnan(windows)).flatten(1).any(1)
