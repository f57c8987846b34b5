"""Placing a CSV's rows on one time grid: many series (long format) or windows of one long series.

Series observed at different times go on the sorted union of their times, NaN where a series has no
observation; so do the windows of an irregularly sampled series (union of offsets from each window's start).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neuralsde.data.csv_cells import OPTION, check_increasing, missing
from neuralsde.errors import ConfigError, DataError


def on_union(path: Path, grids: list[np.ndarray], blocks: list[np.ndarray], longest: int, what: str,
             max_union_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Place each block ``(len_i, C)`` observed at ``grids[i]`` on the sorted union of all grids.
    Returns times ``(U,)`` and values ``(N, U, C)`` with NaN where a series has no observation."""
    union = np.unique(np.concatenate(grids))
    if len(union) > max_union_factor * longest:
        raise DataError(f"{path}: {what} are observed at {len(union)} distinct times, more than "
                        f"{max_union_factor:g} x the longest ({longest}); almost everything would be NaN. "
                        "Fix: resample the data onto a common time grid, or raise data.source.max_union_factor.")
    out = np.full((len(grids), len(union), blocks[0].shape[1]), np.nan)
    for i, (grid, block) in enumerate(zip(grids, blocks, strict=True)):
        out[i, np.searchsorted(union, grid)] = block
    return union, out


def by_id(path: Path, ids: pd.Series, id_column: str, data: np.ndarray, times: np.ndarray | None, lines: np.ndarray,
          max_union_factor: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Long format: one series per id, in order of first appearance; ``times`` None means each series' row index.
    Returns the union of times ``(U,)``, values ``(N, U, C)`` and the ids."""
    absent = missing(ids)
    if absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise DataError(f"{path}: id column {id_column!r}, line {lines[i]}: id is missing. "
                        "Fix: give every row a series id.")
    order = list(dict.fromkeys(ids))
    grids, blocks = [], []
    for sid in order:
        idx = np.flatnonzero((ids == sid).to_numpy())
        grid = times[idx] if times is not None else np.arange(len(idx), dtype="float64")
        check_increasing(path, grid, lines[idx], f"series {id_column}={sid!r}")
        if np.isnan(data[idx]).all():
            raise DataError(f"{path}: series {id_column}={sid!r} (lines {lines[idx[0]]}-"
                            f"{lines[idx[-1]]}) has every value missing. Fix: remove it.")
        grids.append(grid)
        blocks.append(data[idx])
    union, values = on_union(path, grids, blocks, max(len(g) for g in grids), "the series", max_union_factor)
    return union, values, order


def windows(path: Path, times: np.ndarray, data: np.ndarray, lines: np.ndarray, length: int, stride: int,
            drop_empty: bool, max_union_factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of ``length`` rows every ``stride`` rows of one series. Returns the union of offsets from each
    window's start ``(U,)``, values ``(N, U, C)`` and each window's first row index ``(N,)``."""
    n_rows = len(times)
    if length < 2 or stride < 1:
        raise ConfigError(f"{OPTION}window_length={length}, {OPTION}stride={stride}: expected "
                          f"{OPTION}window_length >= 2 and {OPTION}stride >= 1. Fix: change them.")
    if n_rows < length:
        raise DataError(f"{path}: the series has {n_rows} rows, shorter than {OPTION}window_length={length}. "
                        f"Fix: set {OPTION}window_length to at most {n_rows}, or supply more data.")
    starts = np.arange(0, n_rows - length + 1, stride)
    idx = starts[:, None] + np.arange(length)  # (N, length) row indices
    empty = np.isnan(data[idx]).reshape(len(starts), -1).all(1)
    if empty.any() and not drop_empty:
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}: window {i} (lines {lines[idx[i, 0]]}-{lines[idx[i, -1]]}) has every "
                        f"value missing. Fix: remove or fill those rows, change {OPTION}window_length or "
                        f"{OPTION}stride, or set {OPTION}drop_empty_windows=true.")
    starts, idx = starts[~empty], idx[~empty]
    if len(starts) == 0:
        raise DataError(f"{path}: every window has every value missing. Fix: check the data.")
    # Offsets from each window's start; rounding absorbs float noise so equal offsets merge.
    offsets = np.round(times[idx] - times[starts][:, None], 9)
    union, values = on_union(path, list(offsets), list(data[idx]), length, "the windows", max_union_factor)
    return union, values, starts
