"""Beijing multi-site air quality (UCI #501): windows of hourly pollutant readings per station.

Data: 12 stations, hourly from 2013-03-01 00:00 to 2017-02-28 23:00 (35,064 rows each, no missing
timestamps; gaps are ``NA`` values). Licence CC BY 4.0, attribution required: Zhang S. et al. (2017),
"Cautionary tales on air-quality improvement in Beijing", Proc. R. Soc. A 473: 20170457
(https://archive.ics.uci.edu/dataset/501/beijing+multi+site+air+quality+data).

Files: the 12 ``PRSA_Data_<Station>_20130301-20170228.csv`` in ``data_dir/beijing_air_quality/`` are used
as they are (verified by sha256); if any is absent the UCI zip is downloaded and unpacked there.

Split by time: windows come from 12 *parallel* series, so ``window_start`` (hour index since
2013-03-01 00:00, identical for all stations) is a position in calendar time. Splitting on it puts the
same hours of every station in the same split, which avoids leaking a day seen at one station into
the test split through a neighbouring station.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from neuralsde.data.base import RawSeries, name_list, user_path
from neuralsde.data.cache import cache_path, cached
from neuralsde.data.download import ensure_zip_members
from neuralsde.data.windows import nonempty, sliding_windows
from neuralsde.errors import DataError, bad_option

log = logging.getLogger(__name__)

NAME = "beijing_air_quality"
URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00501/PRSA2017_Data_20130301-20170228.zip"
POLLUTANTS = ["PM2.5", "PM10", "SO2", "NO2", "CO", "O3"]
COVARIATES = ["TEMP", "PRES", "DEWP", "RAIN", "WSPM"]  # wd is categorical, so not offered
HOURS = 35064
VERSION = 1  # bump when the preprocessing below changes, so old caches are rebuilt

SHA256 = {
    "Aotizhongxin": "a94fbcfc71708b6ffdc033360163d91efb7f675e496f6b5860929aa96b96351b",
    "Changping": "a2e21402a6d95fb7043f87959e6e3dcbecb957aac356a6f8028a85b047c772e7",
    "Dingling": "3d8dff81f18a80d9f455876a785642bffe1e9b9924ec1e6b7ce8cca790432eeb",
    "Dongsi": "9c0020214425e5ee2a64d42f97a1f632e1d8f6b53ad50edd85a686cc7999f27e",
    "Guanyuan": "59390fee3b032597b387491f5230e7edb90a8558e30217ebd6d9befbe669fbf9",
    "Gucheng": "10ae48801ea55869fee56a48b885fb1127859c130551888d71673f34216ba951",
    "Huairou": "812dcbe848b3ba2c2d25731064797bff803c46eb0c602156a1fa044df136dc26",
    "Nongzhanguan": "572cf87b65ef543cd55d3a711b28474def224a46b0ec3fc8add8aaf13b67a487",
    "Shunyi": "520b59e4ead3b0cfe7f1ed673e30275de8441e999db6f413d5172d2277b8c15a",
    "Tiantan": "0743e34799cf1ee36195b73321b91baa5625276532e7263c588f68cdef3b4daa",
    "Wanliu": "0b1a6d754a07f0def2f55434ddfa3870dcd0063b7f766a6f66b6c11bb05a377a",
    "Wanshouxigong": "ab1d6a356d6997a45f6d657ad47de1e05a4a08d4a7015b38a329a90665ab74d0",
}
STATIONS = list(SHA256)


def station_file(station: str) -> str:
    return f"PRSA_Data_{station}_20130301-20170228.csv"


class AirQualitySource:
    """Windows of the six pollutants (plus optional weather covariates) per station.

    Options: ``window_length`` hours per window (default 24: one day); ``stride`` hours between window
    starts (default ``window_length``: non-overlapping; with ``stride`` a multiple of 24 every window
    starts at midnight); ``stations`` (default all 12); ``covariates`` subset of TEMP, PRES, DEWP,
    RAIN, WSPM appended after the pollutants (default none); ``cache_dir`` for the prepared tensors
    (default ``data_dir``; see ``neuralsde.data.cache``).

    ``load()`` returns values ``(N, window_length, 6 + len(covariates))`` in data units with NaN where a
    reading is missing, times ``0..window_length-1`` (hours), labels ``(N,)`` = station index into
    ``label_names``, window_start ``(N,)`` = hour index of the window's first point.
    Windows whose six pollutants are all missing are dropped (the count is logged and kept in meta).
    """

    def __init__(self, data_dir: str = "datasets", window_length: int = 24, stride: int | None = None,
                 stations: list[str] | None = None, covariates: list[str] | None = None,
                 cache_dir: str | None = None, use_cache: bool = True):
        self.data_dir = str(user_path(data_dir))
        self.cache_dir = str(user_path(cache_dir if cache_dir is not None else data_dir))
        self.window_length = int(window_length)
        self.stride = int(stride) if stride is not None else self.window_length
        self.stations = name_list(stations) if stations is not None else list(STATIONS)
        self.covariates = name_list(covariates) or []
        self.use_cache = use_cache
        unknown = [s for s in self.stations if s not in SHA256]
        if unknown or not self.stations:
            raise bad_option("data.source.stations", stations, f"a non-empty subset of {STATIONS}",
                             "spell station names as in the file names, e.g. Dongsi.")
        bad = [c for c in self.covariates if c not in COVARIATES]
        if bad:
            raise bad_option("data.source.covariates", covariates, f"a subset of {COVARIATES}",
                             f"drop {bad}" + (" (wind direction is categorical, not supported)" if "wd" in bad else ""))

    def _options(self) -> dict:
        return {"window_length": self.window_length, "stride": self.stride, "stations": self.stations,
                "covariates": self.covariates}

    def load(self) -> RawSeries:
        """Read (or reuse the cached) windows; see the class docstring for shapes."""
        members = {station_file(s): SHA256[s] for s in self.stations}
        paths = ensure_zip_members(NAME, members, URL, self.data_dir)
        build = lambda: self._build(paths)
        if not self.use_cache:
            return build().validate(NAME)
        path = cache_path(self.cache_dir, NAME, self._options())
        return cached(path, VERSION, build, self._options()).validate(NAME)

    def _read_station(self, path: Path) -> torch.Tensor:
        """One station's hourly table ``(35064, C)`` float32, NaN for ``NA``."""
        columns = POLLUTANTS + self.covariates
        try:
            frame = pd.read_csv(path, usecols=["year", "month", "day", "hour"] + columns)
        except ValueError as err:
            raise DataError(f"{path}: {err}. Fix: use the unmodified UCI file.") from err
        if len(frame) != HOURS or tuple(frame.iloc[0][["year", "month", "day", "hour"]]) != (2013, 3, 1, 0):
            raise DataError(f"{path}: expected {HOURS} hourly rows starting 2013-03-01 00:00, found "
                            f"{len(frame)} rows. Fix: use the unmodified UCI file.")
        for col in columns:
            if not pd.api.types.is_numeric_dtype(frame[col]):
                raise DataError(f"{path}: column {col} has non-numeric values. Fix: use the UCI file.")
        return torch.tensor(frame[columns].to_numpy(dtype="float32"))

    def _build(self, paths: list[Path]) -> RawSeries:
        all_windows, all_starts, all_labels, dropped = [], [], [], {}
        n_pollutants = len(POLLUTANTS)
        for label, (station, path) in enumerate(zip(self.stations, paths, strict=True)):
            windows, starts = sliding_windows(self._read_station(path), self.window_length, self.stride,
                                              what=str(path))
            keep = nonempty(windows[..., :n_pollutants])  # weather alone is not a pollutant series
            dropped[station] = int((~keep).sum())
            all_windows.append(windows[keep])
            all_starts.append(starts[keep])
            all_labels.append(torch.full((int(keep.sum()),), label, dtype=torch.int64))
        n_dropped = sum(dropped.values())
        log.info("Air quality: dropped %d windows with every pollutant missing (%s).", n_dropped, dropped)
        return RawSeries(
            times=torch.arange(self.window_length, dtype=torch.float32),
            values=torch.cat(all_windows), channel_names=POLLUTANTS + self.covariates,
            labels=torch.cat(all_labels), label_names=list(self.stations),
            window_start=torch.cat(all_starts),
            meta={"time_unit": "hour", "dropped_windows": dropped, "parallel_series": True},
        )
