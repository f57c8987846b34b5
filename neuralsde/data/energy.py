"""Appliances energy use (UCI #374), the TimeGAN "Energy" benchmark: windows of one 10-minute series.

File: ``energy_data.csv`` (19,735 rows every 10 minutes, 2016-01-11 to 2016-05-27, 28 columns, no date
column, no NaN), from the TimeGAN repository (https://github.com/jsyoon0823/TimeGAN,
``data/energy_data.csv``). Licence CC BY 4.0, attribution required: Candanedo L.M., Feldheim V.,
Deramaix D. (2017), "Data driven prediction models of energy use of appliances in a low-energy house",
Energy and Buildings 140: 81-97 (https://archive.ics.uci.edu/dataset/374/appliances+energy+prediction).

Rows are ascending in time; unlike TimeGAN's loader we do not reverse them (see ``stocks.py``).
"""
from __future__ import annotations

import torch

from neuralsde.data.base import RawSeries, name_list, user_path
from neuralsde.data.download import ensure_file
from neuralsde.data.stocks import read_numeric_table
from neuralsde.data.windows import sliding_windows
from neuralsde.errors import bad_option

NAME = "energy_appliances"
FILENAME = "energy_data.csv"
URL = "https://raw.githubusercontent.com/jsyoon0823/TimeGAN/master/data/energy_data.csv"
SHA256 = "0869e426fd33995b4028e092e90ae75c38756172c652b287639d4415985901f2"
COLUMNS = (["Appliances", "lights"] + [f"{k}{i}" for i in range(1, 10) for k in ("T", "RH_")]
           + ["T_out", "Press_mm_hg", "RH_out", "Windspeed", "Visibility", "Tdewpoint", "rv1", "rv2"])


class EnergySource:
    """Overlapping windows of the house's 10-minute readings.

    Options: ``window_length`` (default 24 readings = 4 hours), ``stride`` (default 1),
    ``drop_columns`` (default ``[rv1, rv2]``: random noise the UCI authors added for feature-selection
    tests, identical in every row, so nothing a generative model should learn).

    ``load()`` returns values ``(N, window_length, 26)`` by default with
    ``N = (19735 - window_length) // stride + 1``, times ``0..window_length-1`` (units of 10 minutes), and
    window_start ``(N,)`` = row index of each window's first reading. Use ``split_by: time``.
    """

    def __init__(self, data_dir: str = "datasets", window_length: int = 24, stride: int = 1,
                 drop_columns: list[str] | None = ("rv1", "rv2")):
        self.data_dir = str(user_path(data_dir))
        self.window_length = int(window_length)
        self.stride = int(stride)
        self.drop_columns = name_list(drop_columns) or []
        unknown = [c for c in self.drop_columns if c not in COLUMNS]
        if unknown:
            raise bad_option("data.source.drop_columns", drop_columns, f"names among {COLUMNS}", "check the spelling.")

    def load(self) -> RawSeries:
        """Read the file (downloading it if absent) and cut windows; shapes in the class docstring."""
        path = ensure_file(NAME, FILENAME, URL, SHA256, self.data_dir)
        table = read_numeric_table(path, COLUMNS)
        keep = [i for i, c in enumerate(COLUMNS) if c not in self.drop_columns]
        windows, starts = sliding_windows(table[:, keep], self.window_length, self.stride, what=str(path))
        return RawSeries(times=torch.arange(self.window_length, dtype=torch.float32), values=windows,
                         channel_names=[COLUMNS[i] for i in keep], window_start=starts,
                         meta={"time_unit": "10 minutes", "series_length": table.shape[0]}).validate(NAME)
