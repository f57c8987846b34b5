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

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuralsde.data.base import RawSeries, name_list
from neuralsde.errors import ConfigError, DataError, bad_option

log = logging.getLogger(__name__)

NA_STRINGS = {"", "na", "nan", "null", "n/a", "#n/a", "none"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
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
            raise ConfigError(f"id_column={id_column!r} and window_length={window_length!r} were both set: "
                              "expected one of them. Fix: use id_column for a file of many series, or "
                              "window_length to cut one long series into windows.")
        if stride is not None and window_length is None:
            raise ConfigError(f"stride={stride!r} without window_length. Fix: set window_length too.")
        if not float(time_unit_seconds) > 0:
            raise bad_option("data.source.time_unit_seconds", time_unit_seconds, "a positive number of seconds",
                             "e.g. data.source.time_unit_seconds=3600 (hours)")
        if not float(max_union_factor) >= 1:
            raise bad_option("data.source.max_union_factor", max_union_factor, "a number >= 1",
                             "e.g. data.source.max_union_factor=10")
        self.path = Path(path)
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

    # ---- parsing -------------------------------------------------------------------------------
    def _rows(self) -> tuple[list[str], list[list[str]], np.ndarray]:
        """Header, data rows and each row's line number; ragged or malformed input is refused here
        because pandas would silently pad short rows with NaN."""
        p = self.path
        if not p.is_file():
            raise DataError(f"{p}: file not found. Fix: check the data.source.path option.")
        rows, lines = [], []
        try:
            with open(p, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh, delimiter=self.delimiter, strict=True)
                for row in reader:
                    # Blank lines are skipped (as pandas does); a row of empty fields is a row of NaN.
                    if row and not (len(row) == 1 and not row[0].strip()):
                        rows.append(row)
                        lines.append(reader.line_num)
        except csv.Error as err:
            raise DataError(f"{p}: malformed CSV at line {reader.line_num}: {err}. Fix: check quoting and "
                            "delimiters on that line.") from err
        except UnicodeDecodeError as err:
            raise DataError(f"{p}: not UTF-8 text ({err}). Fix: save the file as UTF-8 CSV.") from err
        if not rows:
            raise DataError(f"{p}: the file is empty. Fix: supply a CSV with a header row and data rows.")
        header = [name.strip() for name in rows[0]]
        dupes = sorted({n for n in header if header.count(n) > 1})
        if dupes or "" in header:
            raise DataError(f"{p}: header (line {lines[0]}) has duplicate or empty column names {dupes or ['']}. "
                            "Fix: give every column a unique name.")
        for row, line in zip(rows[1:], lines[1:], strict=True):
            if len(row) != len(header):
                raise DataError(f"{p}: line {line} has {len(row)} fields but the header has {len(header)}. "
                                "Fix: make every row have one field per column (ragged rows are not allowed).")
        if len(rows) < 2:
            raise DataError(f"{p}: only a header, no data rows. Fix: add data rows.")
        return header, rows[1:], np.asarray(lines[1:])

    def _column(self, header, rows, name, role) -> pd.Series:
        if name not in header:
            raise DataError(f"{self.path}: {role} {name!r} not found; columns are {header}. "
                            "Fix: correct the column name in the data config.")
        j = header.index(name)
        return pd.Series([row[j].strip() for row in rows], dtype=object)

    def _numeric(self, raw: pd.Series, name: str, lines: np.ndarray, chosen: bool = True) -> np.ndarray:
        """Float64 column with NaN for missing markers; anything else non-numeric is a DataError.
        ``chosen``: the column was named in value_columns (else picked by default); only the fix differs."""
        missing = raw.str.lower().isin(NA_STRINGS).to_numpy()
        values = pd.to_numeric(raw.where(~missing), errors="coerce").to_numpy(dtype="float64")
        bad = ~missing & ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            leave_out = ("leave the column out of value_columns" if chosen else
                         "set value_columns to the columns you want, without this one")
            raise DataError(f"{self.path}: column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, not a "
                            f"number. Fix: clean that value, use NA for missing, or {leave_out}.")
        huge = np.abs(np.nan_to_num(values)) > FLOAT32_MAX
        if huge.any():  # float32 (what training uses) would make it an infinity, reported without a place
            i = int(np.flatnonzero(huge)[0])
            raise DataError(f"{self.path}: column {name!r}, line {lines[i]}: {raw.iloc[i]!r} is beyond float32's "
                            f"range (+-{FLOAT32_MAX:.2g}), in which the data are trained. Fix: rescale the column "
                            "(e.g. another unit, or its logarithm).")
        return values

    @staticmethod
    def _text_only(raw: pd.Series) -> bool:
        """True for a column with values but not one number among them (a label, a note, a date): the columns
        that ``value_columns: null`` leaves out. A column of numbers with a few bad cells is not one of them."""
        present = ~raw.str.lower().isin(NA_STRINGS)
        return bool(present.any()) and not pd.to_numeric(raw[present], errors="coerce").notna().any()

    def _times(self, raw: pd.Series, lines: np.ndarray) -> np.ndarray:
        """Numeric times as given, or datetimes as units of ``time_unit_seconds`` since the earliest."""
        name = self.time_column
        missing = raw.str.lower().isin(NA_STRINGS).to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError(f"{self.path}: time column {name!r}, line {lines[i]}: time is missing. "
                            "Fix: every row needs a time; drop or fill that row.")
        numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
        if (~np.isnan(numeric)).mean() >= 0.5:  # mostly numbers: a numeric time column; report its bad cell
            bad = ~np.isfinite(numeric)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{self.path}: time column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, not a "
                                "finite number like the column's other times. Fix: correct that time.")
            return numeric
        stamps = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        if stamps.isna().any():
            stamps = self._other_layout(raw)
        if stamps.isna().any():
            i = int(np.flatnonzero(stamps.isna().to_numpy())[0])
            raise DataError(f"{self.path}: time column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, "
                            f"neither a number nor a date-time in the layout of line {lines[0]} ({raw.iloc[0]!r}). "
                            "Fix: use numbers or ISO 8601 date-times (2013-03-01 10:00:00) in every row.")
        seconds = (stamps - stamps.min()).dt.total_seconds().to_numpy(dtype="float64")
        return seconds / self.time_unit_seconds

    @staticmethod
    def _other_layout(raw: pd.Series) -> pd.Series:
        """Date-times not in ISO 8601 (e.g. 01/03/2013 10:00), all read in one layout: the first row's, month first,
        or else day first if that one reads every row. Parsing row by row (format="mixed") read 01/02/2020 as
        2 January and 13/02/2020 as 13 February in one column. NaT where a row does not fit."""
        from pandas.tseries.api import guess_datetime_format

        stamps = None
        for dayfirst in (False, True):
            layout = guess_datetime_format(raw.iloc[0], dayfirst=dayfirst)
            if layout is None:
                continue
            stamps = pd.to_datetime(raw, errors="coerce", utc=True, format=layout)
            if not stamps.isna().any():
                log.info("CSV times read in the layout %s.", layout)
                return stamps
        if stamps is None:  # a layout pandas cannot name (e.g. words): rows parsed one by one
            return pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        return stamps

    def _check_increasing(self, times: np.ndarray, lines: np.ndarray, what: str) -> None:
        steps = np.diff(times)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            kind = "repeats" if steps[i] == 0 else "goes backwards"
            raise DataError(f"{self.path}: {what}: time {kind} at line {lines[i + 1]} ({float(times[i + 1]):g} after "
                            f"{float(times[i]):g} at line {lines[i]}). Fix: sort the rows by time and remove "
                            "duplicate times within each series.")

    # ---- assembling ----------------------------------------------------------------------------
    def _on_union(self, grids: list[np.ndarray], blocks: list[np.ndarray], longest: int, what: str
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Place each block ``(len_i, C)`` observed at ``grids[i]`` on the sorted union of all grids.
        Returns times ``(U,)`` and values ``(N, U, C)`` with NaN where a series has no observation."""
        union = np.unique(np.concatenate(grids))
        if len(union) > self.max_union_factor * longest:
            raise DataError(f"{self.path}: {what} are observed at {len(union)} distinct times, more than "
                            f"{self.max_union_factor:g} x the longest ({longest}); almost everything would be NaN. "
                            "Fix: resample the data onto a common time grid, or raise data.source.max_union_factor.")
        out = np.full((len(grids), len(union), blocks[0].shape[1]), np.nan)
        for i, (grid, block) in enumerate(zip(grids, blocks, strict=True)):
            out[i, np.searchsorted(union, grid)] = block
        return union, out

    def load(self) -> RawSeries:
        """Parse, check and assemble the file; shapes in the class docstring."""
        return self._assemble().validate(f"CSV {self.path}")

    def _assemble(self) -> RawSeries:
        header, rows, lines = self._rows()
        special = [c for c in (self.time_column, self.id_column) if c is not None]
        if self.value_columns is None:
            names = [c for c in header if c not in special]
            # Columns without a single number are left out; a column of numbers with a bad cell (an inf, #DIV/0!, a
            # typo) is an error at that cell, not silently dropped (the model would then train on fewer channels).
            raws = {name: self._column(header, rows, name, "column") for name in names}
            text = [name for name in names if self._text_only(raws[name])]
            if text:
                log.warning("CSV %s: leaving out the non-numeric column(s) %s (value_columns: null).", self.path, text)
            columns = {name: self._numeric(raws[name], name, lines, chosen=False) for name in names if name not in text}
            if not columns:
                raise DataError(f"{self.path}: no numeric value columns among {names}. "
                                "Fix: set value_columns, or check the delimiter.")
        else:
            columns = {name: self._numeric(self._column(header, rows, name, "value column"), name, lines)
                       for name in self.value_columns}
        data = np.stack(list(columns.values()), axis=1)  # (rows, C)
        empty = [n for n, v in columns.items() if np.isnan(v).all()]
        if empty:
            raise DataError(f"{self.path}: value column(s) {empty} have no values at all (every row missing). "
                            "Fix: set value_columns to the columns you want, without them.")
        times = None
        if self.time_column is not None:
            times = self._times(self._column(header, rows, self.time_column, "time column"), lines)
        channel_names = list(columns)
        if self.id_column is not None:
            return self._long_format(header, rows, lines, data, times, channel_names)
        times = times if times is not None else np.arange(len(rows), dtype="float64")
        self._check_increasing(times, lines, "the series")
        if self.window_length is None:
            return self._raw(times, data[None], channel_names)
        return self._windows(times, data, lines, channel_names)

    def _long_format(self, header, rows, lines, data, times, channel_names) -> RawSeries:
        ids = self._column(header, rows, self.id_column, "id column")
        if ids.str.lower().isin(NA_STRINGS).any():
            i = int(np.flatnonzero(ids.str.lower().isin(NA_STRINGS).to_numpy())[0])
            raise DataError(f"{self.path}: id column {self.id_column!r}, line {lines[i]}: id is missing. "
                            "Fix: give every row a series id.")
        order = list(dict.fromkeys(ids))
        grids, blocks = [], []
        for sid in order:
            idx = np.flatnonzero((ids == sid).to_numpy())
            grid = times[idx] if times is not None else np.arange(len(idx), dtype="float64")
            self._check_increasing(grid, lines[idx], f"series {self.id_column}={sid!r}")
            if np.isnan(data[idx]).all():
                raise DataError(f"{self.path}: series {self.id_column}={sid!r} (lines {lines[idx[0]]}-"
                                f"{lines[idx[-1]]}) has every value missing. Fix: remove it.")
            grids.append(grid)
            blocks.append(data[idx])
        union, values = self._on_union(grids, blocks, max(len(g) for g in grids), "the series")
        raw = self._raw(union, values, channel_names)
        raw.meta["series_ids"] = order
        return raw

    def _windows(self, times, data, lines, channel_names) -> RawSeries:
        length, n_rows = self.window_length, len(times)
        if length < 2 or self.stride < 1:
            raise ConfigError(f"window_length={length}, stride={self.stride}: expected window_length >= 2 "
                              "and stride >= 1. Fix: change them.")
        if n_rows < length:
            raise DataError(f"{self.path}: the series has {n_rows} rows, shorter than window_length={length}. "
                            f"Fix: use window_length <= {n_rows} or supply more data.")
        starts = np.arange(0, n_rows - length + 1, self.stride)
        idx = starts[:, None] + np.arange(length)  # (N, length) row indices
        empty = np.isnan(data[idx]).reshape(len(starts), -1).all(1)
        if empty.any() and not self.drop_empty_windows:
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{self.path}: window {i} (lines {lines[idx[i, 0]]}-{lines[idx[i, -1]]}) has every "
                            "value missing. Fix: remove or fill those rows, change window_length/stride, "
                            "or set drop_empty_windows: true.")
        starts, idx = starts[~empty], idx[~empty]
        if len(starts) == 0:
            raise DataError(f"{self.path}: every window has every value missing. Fix: check the data.")
        # Offsets from each window's start; rounding absorbs float noise so equal offsets merge.
        offsets = np.round(times[idx] - times[starts][:, None], 9)
        union, values = self._on_union(list(offsets), list(data[idx]), length, "the windows")
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
