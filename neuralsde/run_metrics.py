"""The figures a finished run logged, read back from its ``csv/metrics.csv``: what ``scripts/aggregate.py``
averages over seeds and what a ``resume=auto`` rerun of a finished job returns to its sweeper."""
from __future__ import annotations

from pathlib import Path

MEDIAN_METRICS = {"train/step_time"}  # per-step quantities: the median over the run, not the last value
NOT_METRICS = {"epoch", "step"}


def last_logged(csv_path: str | Path) -> dict[str, float]:
    """Last logged value of every metric column, NaN and inf included (median of the finite ones for
    ``MEDIAN_METRICS``). Lightning's CSV logger leaves a metric not logged at a row empty and writes a NaN as
    ``nan``: read as one, a run whose val/sig_mmd went NaN at its end reported its last finite value instead."""
    import math

    import pandas as pd

    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    out = {}
    for col in frame.columns:
        if col in NOT_METRICS:
            continue
        raw = frame[col].str.strip()
        values = pd.to_numeric(raw[raw != ""], errors="coerce")
        if col in MEDIAN_METRICS:
            values = values[values.map(math.isfinite)]
        if len(values):
            out[col] = float(values.median() if col in MEDIAN_METRICS else values.iloc[-1])
    return out
