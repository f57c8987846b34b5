"""Any user CSV as RawSeries: long format (one series per id) or one long series cut into windows.

Times: a numeric ``time_column`` is used as it is (irregular spacing allowed); a datetime column is
converted to ``(t - earliest t in the file) / time_unit_seconds``, i.e. hours since the first timestamp
by default; no ``time_column`` means the row index (per series in long format).

Missing values (empty, NA, NaN, null, N/A, None) become NaN. Series observed at different times are
placed on the sorted union of their times with NaN where a series has no observation; the same holds for
the windows of an irregularly sampled long series (union of offsets from each window's start). A union
more than ``max_union_factor`` times longer than the longest series is refused: that data should be
resampled onto a grid first.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from neuralsde.data import csv_cells, csv_grids
from neuralsde.data.base import RawSeries, name_list, user_path
from neuralsde.data.csv_cells import OPTION, columns_override
from neuralsde.errors import ConfigError, DataError, bad_option

log = logging.getLogger(__name__)

# Names for delimiters hard to pass as one character: '\t' on a command line arrives as a backslash and a t.
DELIMITERS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "space": " ", "pipe": "|"}


class CSVSource:
    """Series from a CSV file with a header row.

    Options: ``path``; ``time_column`` (numeric or datetime; default: row index); ``value_columns``
    (default: every all-numeric column except time and id); ``id_column`` (long format: one series per
    id, in order of first appearance) or ``window_length``/``stride`` (cut the single long series into
    windows; stride defaults to 1); ``time_unit_seconds`` for datetime times (default 3600: hours);
    ``max_union_factor`` (default 10); ``drop_empty_windows`` (default False: a window with every value
    missing is an error); ``delimiter`` (default ``,``; ``tab`` or ``\\t`` for a tab).

    ``load()`` returns values ``(N, T, C)``: N ids (long format), N windows, or 1 series; ``times (T,)``.
    Windows carry ``window_start (N,)`` = row index of each window's first row (position in the long
    series) and ``meta['window_start_time']`` their first time. Long format keeps the ids in
    ``meta['series_ids']``.
    """

    def __init__(self, path: str, time_column: str | None = None, value_columns: list[str] | None = None,
                 id_column: str | None = None, window_length: int | None = None, stride: int | None = None,
                 time_unit_seconds: float = 3600.0, max_union_factor: float = 10.0,
                 drop_empty_windows: bool = False, delimiter: str = ","):
        if id_column is not None and window_length is not None:
            raise ConfigError(f"{OPTION}id_column={id_column!r} and {OPTION}window_length={window_length!r} were both "
                              f"set: expected one of them. Fix: keep {OPTION}id_column for a file of many series, "
                              f"or {OPTION}window_length to cut one long series into windows, and set the other to "
                              "null.")
        if stride is not None and window_length is None:
            raise ConfigError(f"{OPTION}stride={stride!r} without {OPTION}window_length. Fix: set "
                              f"{OPTION}window_length too, or {OPTION}stride=null.")
        if not float(time_unit_seconds) > 0:
            raise bad_option("data.source.time_unit_seconds", time_unit_seconds, "a positive number of seconds",
                             "e.g. data.source.time_unit_seconds=3600 (hours)")
        if not float(max_union_factor) >= 1:
            raise bad_option("data.source.max_union_factor", max_union_factor, "a number >= 1",
                             "e.g. data.source.max_union_factor=10")
        self.path = user_path(path)
        self.time_column, self.id_column = time_column, id_column
        self.value_columns = name_list(value_columns)
        self.window_length = int(window_length) if window_length is not None else None
        self.stride = int(stride) if stride is not None else 1
        self.time_unit_seconds = float(time_unit_seconds)
        self.max_union_factor = float(max_union_factor)
        self.drop_empty_windows = drop_empty_windows
        self.delimiter = DELIMITERS.get(str(delimiter).lower(), delimiter)
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
            # csv's own TypeError named no option; a tab can hardly be typed as one character on a command line
            raise bad_option("data.source.delimiter", delimiter, f"one character or one of {sorted(DELIMITERS)}",
                             "e.g. data.source.delimiter=tab, or data.source.delimiter=';'")

    def load(self) -> RawSeries:
        """Parse, check and assemble the file; shapes in the class docstring."""
        return self._assemble().validate(f"CSV {self.path}")

    def _assemble(self) -> RawSeries:
        path = self.path
        header, rows, lines = csv_cells.read_rows(path, self.delimiter)
        special = [c for c in (self.time_column, self.id_column) if c is not None]
        if self.value_columns is None:
            names = [c for c in header if c not in special]
            # Columns without a single number are left out; a column of numbers with a bad cell (an inf, #DIV/0!, a
            # typo) is an error at that cell, not silently dropped (the model would then train on fewer channels).
            raws = {name: csv_cells.column(path, header, rows, name, "column") for name in names}
            text = [name for name in names if csv_cells.text_only(raws[name])]
            if text:
                log.warning("CSV %s: leaving out the non-numeric column(s) %s (%svalue_columns is null).", path, text,
                            OPTION)
            kept = [name for name in names if name not in text]
            columns = {name: csv_cells.numeric(path, raws[name], name, lines, chosen=False,
                                               others=[n for n in kept if n != name])
                       for name in kept}
            if not columns:
                raise DataError(f"{path}: no numeric value columns among {names}. "
                                f"Fix: set {OPTION}value_columns, or check {OPTION}delimiter.")
        else:
            chosen = self.value_columns
            columns = {name: csv_cells.numeric(
                path, csv_cells.column(path, header, rows, name, "value column", "value_columns"), name, lines,
                others=[n for n in chosen if n != name]) for name in chosen}
        data = np.stack(list(columns.values()), axis=1)  # (rows, C)
        empty = [n for n, v in columns.items() if np.isnan(v).all()]
        if empty:
            rest = [n for n in columns if n not in empty]
            fix = (f"leave them out: {columns_override(rest)}" if rest else
                   f"set {OPTION}value_columns to columns that hold values")
            raise DataError(f"{path}: value column(s) {empty} have no values at all (every row missing). Fix: {fix}.")
        times = None
        if self.time_column is not None:
            raw_times = csv_cells.column(path, header, rows, self.time_column, "time column", "time_column")
            times = csv_cells.parse_times(path, raw_times, self.time_column, lines, self.time_unit_seconds)
        channel_names = list(columns)
        if self.id_column is not None:
            ids = csv_cells.column(path, header, rows, self.id_column, "id column", "id_column")
            union, values, order = csv_grids.by_id(path, ids, self.id_column, data, times, lines,
                                                   self.max_union_factor)
            raw = self._raw(union, values, channel_names)
            raw.meta["series_ids"] = order
            return raw
        times = times if times is not None else np.arange(len(rows), dtype="float64")
        csv_cells.check_increasing(path, times, lines, "the series")
        if self.window_length is None:
            return self._raw(times, data[None], channel_names)
        union, values, starts = csv_grids.windows(path, times, data, lines, self.window_length, self.stride,
                                                  self.drop_empty_windows, self.max_union_factor)
        raw = self._raw(union, values, channel_names)
        raw.window_start = torch.as_tensor(starts, dtype=torch.int64)
        raw.meta["window_start_time"] = torch.as_tensor(times[starts], dtype=torch.float64)
        return raw

    def _raw(self, times: np.ndarray, values: np.ndarray, channel_names: list[str]) -> RawSeries:
        # Times stay float64: float32 holds integers exactly only up to 2**24, so Unix timestamps (1.6e9 s, 1.6e12
        # ms) or YYYYMMDD numbers would be rounded to multiples of 128 or more, into uneven or repeated times.
        return RawSeries(times=torch.as_tensor(times, dtype=torch.float64),
                         values=torch.as_tensor(values, dtype=torch.float32), channel_names=channel_names,
                         meta={"path": str(self.path)})
