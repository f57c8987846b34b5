"""LOBSTER limit-order-book data: midpoint price and log-spread on a regular 1-minute grid.

Default files: the free LOBSTER demo sample for GOOG on NASDAQ, 2012-06-21, 09:30-16:00, level 1
(``GOOG_2012-06-21_34200000_57600000_{message,orderbook}_1.csv``, no header rows), from the archive
``LOBSTER_SampleFile_GOOG_2012-06-21_1.zip`` (sha256 34ec1262...f5cc) on the samples page
https://lobsterdata.com/info/DataSamples.php. Cite Huang R., Polak T. (2011), "LOBSTER: Limit Order
Book Reconstruction System", SSRN 1977207. **No explicit licence**: the samples are free demos with no
redistribution terms; use them for internal research and tests, do not re-publish, ask before
commercial use. For that reason there is no automatic download: unpack the zip into
``data_dir/lobster_goog/``. Other LOBSTER days can be used via ``message_file``/``orderbook_file``.

Kidger et al. (2021) used Google LOBSTER data as midpoint and log-spread in 1-minute bars; which days
is not public, so this one-day sample (390 minutes) is a stand-in, not the paper's dataset.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuralsde.data.base import RawSeries, user_path
from neuralsde.data.cache import cache_path, cached, file_sha256
from neuralsde.data.download import ensure_file
from neuralsde.data.windows import sliding_windows
from neuralsde.errors import DataError, bad_option

NAME = "lobster_goog"
SAMPLE_PAGE = "https://lobsterdata.com/info/DataSamples.php"
MESSAGE = "GOOG_2012-06-21_34200000_57600000_message_1.csv"
ORDERBOOK = "GOOG_2012-06-21_34200000_57600000_orderbook_1.csv"
SHA256 = {MESSAGE: "4d1c8b44c9c1c5d5bbb49fb2876cc3bbc1645e2d57694679a6d5116113c07924",
          ORDERBOOK: "e0f365aee42d7bf74c0bc0a404c4466dd3d22658b9bc62755820e87e79219697"}
DUMMY_PRICE = 9999999999  # LOBSTER's placeholder for an empty book side
VERSION = 1
MAX_QUIET_S = 900  # seconds without a valid event at the session's start or end that mean the file does not cover it


def _read(path: Path, n_cols: int) -> np.ndarray:
    """A headerless numeric LOBSTER file as a float64 array ``(rows, n_cols)``."""
    try:
        frame = pd.read_csv(path, header=None, on_bad_lines="error", dtype="float64")
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: not a numeric LOBSTER file ({err}). Fix: use the unmodified file.") from err
    if frame.shape[1] < n_cols or frame.isna().any().any():
        raise DataError(f"{path}: expected at least {n_cols} numeric columns without gaps, found "
                        f"{frame.shape[1]} columns. Fix: use the unmodified LOBSTER file.")
    return frame.to_numpy()[:, :n_cols]


def bar_features(times_s: np.ndarray, ask: np.ndarray, bid: np.ndarray, start_s: float, end_s: float,
                 bar_seconds: float) -> np.ndarray:
    """Midpoint and log-spread sampled at the last valid event of each bar, forward-filled.

    times_s, ask, bid: ``(E,)`` event times in seconds after midnight and best prices in USD.
    Returns ``(n_bars, 2)`` float64 with ``n_bars = ceil((end_s - start_s) / bar_seconds)``; bars before
    the first valid event stay NaN (no book state is known there).
    """
    n_bars = math.ceil((end_s - start_s) / bar_seconds)
    valid = np.isfinite(ask) & np.isfinite(bid) & (ask > bid) & (times_s >= start_s) & (times_s < end_s)
    t, a, b = times_s[valid], ask[valid], bid[valid]
    bucket = np.floor((t - start_s) / bar_seconds).astype(np.int64)
    features = np.full((n_bars, 2), np.nan)
    # Events are in time order, so the last event of a bucket is the last index with that bucket.
    last = np.flatnonzero(np.r_[bucket[1:] != bucket[:-1], True]) if len(bucket) else np.empty(0, int)
    features[bucket[last], 0] = (a[last] + b[last]) / 2
    features[bucket[last], 1] = np.log(a[last] - b[last])
    frame = pd.DataFrame(features).ffill()  # no event in a bar: the book is unchanged
    return frame.to_numpy()


class LobsterSource:
    """Windows of the (midpoint, log_spread) bar series of one LOBSTER trading day.

    Options: ``bar_minutes`` (default 1), ``window_length`` bars (default 30), ``stride`` bars (default 1),
    ``session_start_s`` / ``session_end_s`` (default 34200 / 57600: 09:30-16:00 in seconds after
    midnight), ``message_file`` / ``orderbook_file`` inside ``data_dir/lobster_goog/`` (default: the GOOG
    sample, verified by sha256; other files are used unverified), ``cache_dir`` (default ``data_dir``).

    ``load()`` returns values ``(N, window_length, 2)`` = midpoint (USD) and log(ask - bid in USD),
    times ``bar_minutes * (0..window_length-1)`` (minutes), window_start ``(N,)`` = bar index of each
    window's first bar. One 1-minute day has 390 bars, so 361 windows of 30 at stride 1; use
    ``split_by: time``. ``window_length: 390, stride: 390`` gives the whole day as one series.
    ``rebase`` (default False): the midpoint less the window's first observed midpoint (channel
    ``midpoint_change``), so that windows from a later part of the day are not at another price level.
    """

    def __init__(self, data_dir: str = "datasets", bar_minutes: float = 1, window_length: int = 30,
                 stride: int = 1, session_start_s: float = 34200, session_end_s: float = 57600,
                 message_file: str = MESSAGE, orderbook_file: str = ORDERBOOK,
                 cache_dir: str | None = None, use_cache: bool = True, rebase: bool = False):
        if not float(bar_minutes) > 0:
            raise bad_option("data.source.bar_minutes", bar_minutes, "a positive number of minutes",
                             "e.g. data.source.bar_minutes=1")
        if not float(session_end_s) > float(session_start_s):
            raise bad_option("data.source.session_end_s", session_end_s,
                             f"a time after session_start_s={session_start_s} (seconds after midnight)",
                             "e.g. session_start_s=34200 and session_end_s=57600 (09:30-16:00)")
        self.data_dir = str(user_path(data_dir))
        self.rebase = rebase
        self.cache_dir = str(user_path(cache_dir if cache_dir is not None else data_dir))
        self.bar_minutes = float(bar_minutes)
        self.window_length = int(window_length)
        self.stride = int(stride)
        self.session = (float(session_start_s), float(session_end_s))
        self.files = (message_file, orderbook_file)
        self.use_cache = use_cache

    def _path(self, filename: str) -> Path:
        if filename in SHA256:
            return ensure_file(NAME, filename, None, SHA256[filename], self.data_dir)
        path = Path(self.data_dir) / NAME / filename
        if not path.exists():
            raise DataError(f"{path} not found. Fix: place the LOBSTER file there (see {SAMPLE_PAGE}).")
        return path

    def load(self) -> RawSeries:
        """Read both files, build bars and windows; shapes in the class docstring."""
        try:
            message, orderbook = (self._path(f) for f in self.files)
        except DataError as err:
            raise DataError(f"{err} LOBSTER data are not downloaded automatically (no redistribution "
                            f"licence): get LOBSTER_SampleFile_GOOG_2012-06-21_1.zip from {SAMPLE_PAGE} "
                            f"and unpack it into {Path(self.data_dir) / NAME}.") from err
        build = lambda: self._build(message, orderbook)
        raw = build() if not self.use_cache else self._cached(message, orderbook, build)
        if self.rebase:
            raw = _rebase_midpoint(raw)
        return raw.validate(NAME)

    def _cached(self, message: Path, orderbook: Path, build) -> RawSeries:
        # The files' contents key the cache, not only their names: other files than the verified sample are used
        # unverified, and another day saved under the same name came back as the old day's bars from the cache.
        memo = Path(self.cache_dir) / NAME / "prepared" / "file-sha256.json"
        contents = [SHA256.get(f) or file_sha256(p, memo)
                    for f, p in zip(self.files, (message, orderbook), strict=True)]
        options = {"bar_minutes": self.bar_minutes, "window_length": self.window_length, "stride": self.stride,
                   "session": self.session, "files": self.files, "sha256": contents}
        return cached(cache_path(self.cache_dir, NAME, options), VERSION, build, options)

    def _build(self, message: Path, orderbook: Path) -> RawSeries:
        msg, book = _read(message, 6), _read(orderbook, 4)
        if len(msg) != len(book):
            raise DataError(f"{orderbook}: {len(book)} rows but {message} has {len(msg)}; row i of the "
                            "orderbook must be the book after message i. Fix: use matching files.")
        times_s = msg[:, 0]
        if (np.diff(times_s) < 0).any():
            row = int(np.flatnonzero(np.diff(times_s) < 0)[0]) + 2
            raise DataError(f"{message}: event time decreases at row {row}. Fix: use the unmodified file.")
        ask, bid = book[:, 0].copy(), book[:, 2].copy()
        ask[np.abs(ask) >= DUMMY_PRICE] = np.nan  # empty side of the book: no price
        bid[np.abs(bid) >= DUMMY_PRICE] = np.nan
        _check_coverage(message, times_s[np.isfinite(ask) & np.isfinite(bid) & (ask > bid)], *self.session)
        bars = bar_features(times_s, ask / 1e4, bid / 1e4, *self.session, self.bar_minutes * 60)
        series = torch.tensor(bars, dtype=torch.float32)
        windows, starts = sliding_windows(series, self.window_length, self.stride, what=str(message))
        return RawSeries(times=torch.arange(self.window_length, dtype=torch.float32) * self.bar_minutes,
                         values=windows, channel_names=["midpoint", "log_spread"], window_start=starts,
                         meta={"time_unit": "minute", "n_bars": int(series.shape[0])})


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_coverage(message: Path, event_s: np.ndarray, start_s: float, end_s: float) -> None:
    """Refuse a file whose valid events leave the session's start or end uncovered for over ``MAX_QUIET_S``: bars
    after the last event repeat its book state (before the first they are NaN), so a truncated file (its first
    5,000 rows: events to 09:52) gave 361 windows of which all but 20 were one constant state, silently."""
    inside = event_s[(event_s >= start_s) & (event_s < end_s)]
    span = (f"its valid events run from {_clock(event_s[0])} to {_clock(event_s[-1])}" if len(event_s)
            else "it has no valid book state (ask above bid)")
    if len(inside) == 0 or inside[0] - start_s > MAX_QUIET_S or end_s - inside[-1] > MAX_QUIET_S:
        raise DataError(f"{message}: {span}, which does not cover the session {_clock(start_s)}-{_clock(end_s)} "
                        f"(data.source.session_start_s={start_s:g}, session_end_s={end_s:g}) to within "
                        f"{MAX_QUIET_S // 60} minutes. Fix: use the complete files (a truncated copy?), or set "
                        "session_start_s/session_end_s to the hours the files cover.")


def _rebase_midpoint(raw: RawSeries) -> RawSeries:
    """The midpoint channel less each window's first observed midpoint (NaN stays NaN)."""
    mid = raw.values[..., 0]
    observed = ~torch.isnan(mid)
    first = mid.gather(1, observed.float().argmax(1, keepdim=True))  # the first observed bar of each window
    values = raw.values.clone()
    values[..., 0] = mid - first
    return RawSeries(times=raw.times, values=values, channel_names=["midpoint_change", *raw.channel_names[1:]],
                     window_start=raw.window_start, meta=raw.meta)
