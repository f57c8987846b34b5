"""What every data source returns, and the checks every source shares."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuralsde.errors import DataError


def name_list(value) -> list[str] | None:
    """A list-of-names option (columns, stations): one name given on the command line (``value_columns=PM2.5``)
    is a list of that name, not of its characters. None stays None."""
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def user_path(value) -> Path:
    """A path option with ``$VAR`` and a leading ``~`` expanded, still relative where it was: Hydra hands a quoted
    ``"~/x.csv"`` or a sweep's ``'$DATA/x.csv'`` over as typed, and ``Path`` read it as a folder named ``~`` (or
    ``$DATA``) in the current directory."""
    return Path(os.path.expanduser(os.path.expandvars(str(value))))


@dataclass
class RawSeries:
    """Series as a source produces them, before splitting and normalisation.

    times: ``(T,)`` strictly increasing observation times, in the source's own unit.
    values: ``(N, T, C)`` float32, NaN where a value is missing.
    channel_names: ``C`` names.
    labels: optional ``(N,)`` int64 class per series (e.g. the station), with ``label_names``.
    window_start: optional ``(N,)`` int64 position of each window in one long underlying series;
        present when windows were cut from a long series, so that a split by time can keep every
        window inside one split.
    """

    times: torch.Tensor
    values: torch.Tensor
    channel_names: list[str]
    labels: torch.Tensor | None = None
    label_names: list[str] | None = None
    window_start: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def validate(self, source: str) -> "RawSeries":
        """Raise a DataError naming ``source`` if shapes or contents are unusable. Values of another real dtype
        (float64 from numpy, integers) are converted to the documented float32 here: the model is float32 (or
        cast as a whole by ``trainer.precision``), and a float64 batch reached it as a dtype error mid-training."""
        for name in ("times", "values"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise DataError(f"{source}: {name} must be a torch.Tensor, got {type(value).__name__}. "
                                f"Fix: return torch.as_tensor({name}) from load().")
        if self.values.ndim != 3:
            raise DataError(f"{source}: values must have shape (N, T, C), got {tuple(self.values.shape)}. Fix: "
                            "one channel needs a trailing axis of size 1, e.g. values.unsqueeze(-1).")
        if self.values.is_complex() or self.values.dtype == torch.bool:
            raise DataError(f"{source}: values must be real numbers, got dtype {self.values.dtype}.")
        if self.values.dtype != torch.float32:
            self.values = self.values.float()
        n, t, c = self.values.shape
        if n == 0 or t < 2 or c == 0:
            raise DataError(f"{source}: need at least one series of two or more times and one channel, "
                            f"got shape {(n, t, c)}. Fix: check the file or the window length.")
        if self.times.shape != (t,):
            hint = (f" values look like (T, N, C) = {(n, t, c)}: Fix: return values.transpose(0, 1)."
                    if self.times.shape == (n,) else " Fix: one time per position along values' axis 1.")
            raise DataError(f"{source}: times must have shape ({t},) (values are (N, T, C) = {(n, t, c)}), "
                            f"got {tuple(self.times.shape)}.{hint}")
        bad = (~torch.isfinite(self.times.double())).nonzero().flatten()
        if len(bad):
            raise DataError(f"{source}: observation times must be finite numbers, but times[{int(bad[0])}] is "
                            f"{self.times[bad[0]].item()} ({len(bad)} such). Fix: every position needs a time; "
                            "a missing observation is a NaN value, not a NaN time.")
        back = (self.times[1:] <= self.times[:-1]).nonzero().flatten()
        if len(back):
            k = int(back[0]) + 1
            raise DataError(f"{source}: observation times must be strictly increasing, but times[{k}]="
                            f"{self.times[k].item()} follows times[{k - 1}]={self.times[k - 1].item()}. Fix: sort "
                            "the times (and values' axis 1 with them) and drop repeated times.")
        if isinstance(self.channel_names, str):
            raise DataError(f"{source}: channel_names must be a list of {c} names, got the string "
                            f"{self.channel_names!r}. Fix: e.g. channel_names=[{self.channel_names!r}].")
        for name in ("labels", "window_start"):  # one per series; a shorter window_start mis-split silently
            value = getattr(self, name)
            if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,)
                                      or value.is_floating_point()):
                got = f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, torch.Tensor) else type(value)
                raise DataError(f"{source}: {name} must be an integer tensor of shape ({n},), one per series, got "
                                f"{got}. Fix: return torch.as_tensor({name}, dtype=torch.long) with one entry per "
                                "series, or None.")
        if len(self.channel_names) != c:
            raise DataError(f"{source}: {c} channels but {len(self.channel_names)} channel names.")
        observed = ~torch.isnan(self.values)
        empty_channels = [self.channel_names[i] for i in range(c) if not observed[..., i].any()]
        if empty_channels:
            raise DataError(f"{source}: channel(s) {empty_channels} are missing everywhere. "
                            "Fix: drop them from the value columns.")
        empty_series = (~observed.flatten(1).any(1)).nonzero().flatten()
        if len(empty_series):
            raise DataError(f"{source}: {len(empty_series)} series have every value missing "
                            f"(first index {int(empty_series[0])}). Fix: drop them before training.")
        if torch.isinf(self.values).any():
            raise DataError(f"{source}: values contain infinities. Fix: replace them by NaN or clean the data.")
        return self
