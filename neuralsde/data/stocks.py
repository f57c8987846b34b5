"""GOOG daily prices, the TimeGAN "Stocks" benchmark: sliding windows of one long daily series.

File: ``stock_data.csv`` (3,685 trading days from 2004-08-19, columns Open, High, Low, Close,
Adj_Close, Volume; no date column, no NaN), from the TimeGAN repository
(https://github.com/jsyoon0823/TimeGAN, ``data/stock_data.csv``). Prices come from Yahoo Finance
(https://finance.yahoo.com/quote/GOOG/history?p=GOOG); the data carry **no open licence** (Yahoo's
terms allow personal, non-commercial use; TimeGAN's Apache-2.0 covers only its code), so keep the file
inside the project and do not re-publish it.

Order: the file is already ascending in time. TimeGAN's loader flips it ("to make chronological
data"), so TimeGAN trains on the time-reversed series; we do not flip, since a generative model of
dynamics should see time run forwards.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from neuralsde.data.base import RawSeries, user_path
from neuralsde.data.download import ensure_file
from neuralsde.data.windows import sliding_windows
from neuralsde.errors import DataError

NAME = "stock_goog_daily"
FILENAME = "stock_data.csv"
URL = "https://raw.githubusercontent.com/jsyoon0823/TimeGAN/master/data/stock_data.csv"
SHA256 = "134b8a00eb4eefa3242dd7ae85144082da80dedf75a1a656d5d08f97cd95277a"
COLUMNS = ["Open", "High", "Low", "Close", "Adj_Close", "Volume"]


def read_numeric_table(path: str | Path, columns: list[str]) -> torch.Tensor:
    """Read a header CSV whose columns must be exactly ``columns``; returns ``(rows, len(columns))`` float32."""
    try:
        frame = pd.read_csv(path, on_bad_lines="error")
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: could not be parsed as CSV ({err}). Fix: use the published file.") from err
    if list(frame.columns) != columns:
        raise DataError(f"{path}: expected columns {columns}, found {list(frame.columns)}. "
                        "Fix: use the published file.")
    for col in columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise DataError(f"{path}: column {col} has non-numeric values. Fix: use the published file.")
    return torch.tensor(frame.to_numpy(dtype="float32"))


class GoogDailySource:
    """Overlapping windows of GOOG daily OHLCV in time order.

    Options: ``window_length`` trading days (default 24, as TimeGAN), ``stride`` (default 1),
    ``drop_adj_close`` (default False: keep all 6 columns, although Adj_Close equals Close in every
    row; dropping it removes a perfectly collinear channel), ``log_volume`` (default False: replace
    Volume by log(Volume), whose scale is far better behaved), ``rebase`` (default False: each window
    relative to its first day, prices divided by that day's Open and Volume divided by its Volume, or
    log(Volume) less its log(Volume); the shape of a window rather than the price level, which over
    fifteen years rose twenty-fold, so that a later test period is not outside the training range).

    ``load()`` returns values ``(N, window_length, C)`` with ``N = (3685 - window_length) // stride + 1``
    and ``C`` = 6 (5 if dropping Adj_Close), times ``0..window_length-1`` (trading days), and window_start
    ``(N,)`` = row index of each window's first day. Windows overlap, so use ``split_by: time``.
    """

    def __init__(self, data_dir: str = "datasets", window_length: int = 24, stride: int = 1,
                 drop_adj_close: bool = False, log_volume: bool = False, rebase: bool = False):
        self.data_dir = str(user_path(data_dir))
        self.window_length = int(window_length)
        self.stride = int(stride)
        self.drop_adj_close = drop_adj_close
        self.log_volume = log_volume
        self.rebase = rebase

    def load(self) -> RawSeries:
        """Read the file (downloading it if absent) and cut windows; shapes in the class docstring."""
        path = ensure_file(NAME, FILENAME, URL, SHA256, self.data_dir)
        table = read_numeric_table(path, COLUMNS)
        names = list(COLUMNS)
        if self.log_volume:
            if (table[:, -1] <= 0).any():
                raise DataError(f"{path}: Volume has values <= 0, so log_volume is undefined. "
                                "Fix: set log_volume: false.")
            table[:, -1] = table[:, -1].log()
            names[-1] = "log_Volume"
        if self.drop_adj_close:
            keep = [i for i, n in enumerate(names) if n != "Adj_Close"]
            table, names = table[:, keep], [names[i] for i in keep]
        windows, starts = sliding_windows(table, self.window_length, self.stride, what=str(path))
        if self.rebase:
            windows = _rebase(windows, names)
            names = [f"{n}_rel" for n in names]
        return RawSeries(times=torch.arange(self.window_length, dtype=torch.float32), values=windows,
                         channel_names=names, window_start=starts,
                         meta={"time_unit": "trading day", "series_length": table.shape[0]}).validate(NAME)


def _rebase(windows: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Windows ``(N, T, C)`` relative to their first day: prices / first Open, Volume / first Volume,
    log_Volume - first log_Volume."""
    first = windows[:, :1]
    out = windows.clone()
    prices = [i for i, n in enumerate(names) if n not in ("Volume", "log_Volume")]
    out[..., prices] = windows[..., prices] / first[..., names.index("Open")].unsqueeze(-1)
    v = next(i for i, n in enumerate(names) if n in ("Volume", "log_Volume"))
    out[..., v] = windows[..., v] - first[..., v] if names[v] == "log_Volume" else windows[..., v] / first[..., v]
    return out
