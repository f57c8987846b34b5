"""A CSV's rows and cells: reading the file, and turning a column's cells into numbers or times.

Every error names the file, the column and the line of the offending cell, because pandas alone would pad
ragged rows, coerce bad cells to NaN, or report a cell by its row position.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from neuralsde.errors import DataError

log = logging.getLogger(__name__)

NA_STRINGS = {"", "na", "nan", "null", "n/a", "#n/a", "none"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
# The CSV options as typed on the command line: a fix naming "value_columns" alone left the user to find the prefix.
OPTION = "data.source."


def columns_override(names: list[str]) -> str:
    """``data.source.value_columns=[a,b]`` as typed on the command line; a name other than a plain word quoted
    for Hydra's list syntax."""
    items = [n if re.fullmatch(r"[\w.-]+", n) else repr(n) for n in names]
    return f"{OPTION}value_columns=[{','.join(items)}]"


def read_rows(path: Path, delimiter: str) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, data rows and each row's line number; ragged or malformed input is refused here
    because pandas would silently pad short rows with NaN."""
    if not path.is_file():
        # a relative path is looked up from the current directory: eval.py or sample.py started elsewhere than the
        # training run missed a file that is there
        where = "" if path.is_absolute() else f" (a relative path, looked up from {Path.cwd()})"
        fix = "check the data.source.path option" + ("" if path.is_absolute() else ", or give it as an absolute path")
        # os.path.expandvars leaves an unset variable as typed
        unset = sorted({f"${name}" for name in re.findall(r"\$\{?(\w+)", str(path))})
        if unset:
            where += f"; {', '.join(unset)} not set in the environment"
            fix = f"set {', '.join(unset)}, or {fix}"
        raise DataError(f"{path}: file not found{where}. Fix: {fix}.")
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            for row in reader:
                # Blank lines are skipped (as pandas does); a row of empty fields is a row of NaN.
                if row and not (len(row) == 1 and not row[0].strip()):
                    rows.append(row)
                    lines.append(reader.line_num)
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num}: {err}. Fix: check quoting and "
                        "delimiters on that line.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}). Fix: save the file as UTF-8 CSV.") from err
    if not rows:
        raise DataError(f"{path}: the file is empty. Fix: supply a CSV with a header row and data rows.")
    header = [name.strip() for name in rows[0]]
    _check_delimiter(path, header, delimiter)
    dupes = sorted({n for n in header if header.count(n) > 1})
    # a file without a header row: its first row of numbers was read as the column names
    numbers = all(pd.to_numeric(pd.Series(header), errors="coerce").notna())
    no_header = (f" Line {lines[0]} holds only numbers: the file looks headerless. Fix: add a first line naming the "
                 "columns, e.g. id,time,a,b.") if numbers else ""
    if dupes or "" in header:
        raise DataError(f"{path}: header (line {lines[0]}) has duplicate or empty column names {dupes or ['']}."
                        + (no_header or " Fix: give every column a unique name."))
    if numbers:
        log.warning("CSV %s: the column names %s are all numbers, so the first data row may have been read as the "
                    "header and left out of the data.%s", path, header, no_header)
    for row, line in zip(rows[1:], lines[1:], strict=True):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields but the header has {len(header)}. "
                            "Fix: make every row have one field per column (ragged rows are not allowed).")
    if len(rows) < 2:
        raise DataError(f"{path}: only a header, no data rows. Fix: add data rows.")
    return header, rows[1:], np.asarray(lines[1:])


# Delimiters a one-column header may betray, by the name data.source.delimiter takes (a space is left out: column
# names often hold one).
OTHER_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _check_delimiter(path: Path, header: list[str], delimiter: str) -> None:
    """A header read as one column that holds another delimiter: the file was split by the wrong character. Read on,
    it failed later as "no numeric value columns among ['id;t;a;b']" or as an id or time column not found."""
    if len(header) != 1:
        return
    found = [(char, name) for char, name in OTHER_DELIMITERS.items() if char != delimiter and char in header[0]]
    if found:
        char, name = max(found, key=lambda item: header[0].count(item[0]))
        raise DataError(f"{path}: the header (line 1) is a single column {header[0]!r} when split at "
                        f"{delimiter!r}, and it holds {header[0].count(char)} {char!r}: the file looks "
                        f"{name}-separated. Fix: data.source.delimiter={name}.")


def column(path: Path, header: list[str], rows: list[list[str]], name: str, role: str,
           option: str | None = None) -> pd.Series:
    """The stripped text cells of column ``name`` (``role``, e.g. "time column", names it in the error, and
    ``option``, e.g. "time_column", the option that chose it)."""
    if name not in header:
        fix = f"set {OPTION}{option} to one of them" if option else "correct the column name"
        raise DataError(f"{path}: {role} {name!r} not found; columns are {header}. Fix: {fix}.")
    j = header.index(name)
    return pd.Series([row[j].strip() for row in rows], dtype=object)


def missing(raw: pd.Series) -> np.ndarray:
    """``(rows,)`` bool: True where a cell is one of the missing-value markers (``NA_STRINGS``, any case)."""
    return raw.str.lower().isin(NA_STRINGS).to_numpy()


def numeric(path: Path, raw: pd.Series, name: str, lines: np.ndarray, chosen: bool = True,
            others: list[str] | None = None) -> np.ndarray:
    """Float64 column with NaN for missing markers; anything else non-numeric is a DataError.
    ``chosen``: the column was named in value_columns (else picked by default); only the fix differs. ``others``: the
    other value columns, which the fix then lists."""
    absent = missing(raw)
    values = pd.to_numeric(raw.where(~absent), errors="coerce").to_numpy(dtype="float64")
    bad = ~absent & ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        keep = f" ({columns_override(others)})" if others else ""
        leave_out = (f"leave it out of {OPTION}value_columns{keep}" if chosen else
                     f"set {OPTION}value_columns to the columns you want, without this one{keep}")
        raise DataError(f"{path}: column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, not a "
                        f"number. Fix: clean that value, use NA for missing, or {leave_out}.")
    huge = np.abs(np.nan_to_num(values)) > FLOAT32_MAX
    if huge.any():  # float32 (what training uses) would make it an infinity, reported without a place
        i = int(np.flatnonzero(huge)[0])
        raise DataError(f"{path}: column {name!r}, line {lines[i]}: {raw.iloc[i]!r} is beyond float32's "
                        f"range (+-{FLOAT32_MAX:.2g}), in which the data are trained. Fix: rescale the column "
                        "(e.g. another unit, or its logarithm).")
    return values


def text_only(raw: pd.Series) -> bool:
    """True for a column with values but not one number among them (a label, a note, a date): the columns
    that ``value_columns: null`` leaves out. A column of numbers with a few bad cells is not one of them."""
    present = ~missing(raw)
    return bool(present.any()) and not pd.to_numeric(raw[present], errors="coerce").notna().any()


def parse_times(path: Path, raw: pd.Series, name: str, lines: np.ndarray, unit_seconds: float) -> np.ndarray:
    """Numeric times as given, or datetimes as units of ``unit_seconds`` since the earliest."""
    absent = missing(raw)
    if absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise DataError(f"{path}: time column {name!r}, line {lines[i]}: time is missing. "
                        "Fix: every row needs a time; drop or fill that row.")
    number = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
    if (~np.isnan(number)).mean() >= 0.5:  # mostly numbers: a numeric time column; report its bad cell
        bad = ~np.isfinite(number)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: time column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, not a "
                            "finite number like the column's other times. Fix: correct that time.")
        return number
    stamps = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
    if stamps.isna().any():
        stamps = _other_layout(raw)
    if stamps.isna().any():
        i = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise DataError(f"{path}: time column {name!r}, line {lines[i]}: found {raw.iloc[i]!r}, "
                        f"neither a number nor a date-time in the layout of line {lines[0]} ({raw.iloc[0]!r}). "
                        "Fix: use numbers or ISO 8601 date-times (2013-03-01 10:00:00) in every row.")
    seconds = (stamps - stamps.min()).dt.total_seconds().to_numpy(dtype="float64")
    return seconds / unit_seconds


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


def check_increasing(path: Path, times: np.ndarray, lines: np.ndarray, what: str) -> None:
    """A DataError at the first line whose time repeats or goes backwards within ``what`` (a series)."""
    steps = np.diff(times)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        kind = "repeats" if steps[i] == 0 else "goes backwards"
        raise DataError(f"{path}: {what}: time {kind} at line {lines[i + 1]} ({float(times[i + 1]):g} after "
                        f"{float(times[i]):g} at line {lines[i]}). Fix: sort the rows by time and remove "
                        "duplicate times within each series.")
