"""A user's own data source: whatever its load() returns is checked by the data module, with the fix named."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralsde.data.base import RawSeries
from neuralsde.data.datamodule import TimeSeriesDataModule
from neuralsde.errors import DataError


class SineSource:
    """A custom source as a user writes it: no call to RawSeries.validate."""

    def __init__(self, mistake: str | None = None):
        self.mistake = mistake

    def load(self):
        times = torch.linspace(0, 2 * math.pi, 16)
        values = torch.sin(times + torch.linspace(0, 6, 40).view(-1, 1)).unsqueeze(-1)
        names = ["y"]
        m = self.mistake
        if m == "decreasing":
            times = times.flip(0)
        elif m == "nan_time":
            times = times.clone()
            times[3] = float("nan")
        elif m == "float64":
            values, times = values.double(), times.double()
        elif m == "numpy":
            values = values.numpy()
        elif m == "tuple":
            return times, values
        elif m == "transposed":
            values = values.transpose(0, 1)
        elif m == "names":
            names = ["a", "b"]
        elif m == "name_string":
            names = "y"
        return RawSeries(times, values, names)


def setup(mistake):
    dm = TimeSeriesDataModule(SineSource(mistake), batch_size=8)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("mistake, words", [
    ("decreasing", "strictly increasing, but times[1]"),
    ("nan_time", "times[3] is nan"),
    ("numpy", "values must be a torch.Tensor, got ndarray"),
    ("tuple", "SineSource.load() returned tuple"),
    ("transposed", "values.transpose(0, 1)"),
    ("names", "1 channels but 2 channel names"),
    ("name_string", "channel_names must be a list"),
])
def test_custom_source_mistakes_are_named(mistake, words):
    with pytest.raises(DataError) as err:
        setup(mistake)
    assert words in str(err.value)
    assert "SineSource" in str(err.value)


def test_float64_values_become_float32():
    """A float64 source trained into 'mat1 and mat2 must have the same dtype' at the first step."""
    dm = setup("float64")
    assert dm.train.dtype == torch.float32 and dm.filled["train"].dtype == torch.float32


def test_builtin_validation_unchanged_for_good_source():
    dm = setup(None)
    assert dm.train.shape[1:] == (16, 2)
    raw = RawSeries(torch.arange(3.0), torch.from_numpy(np.zeros((2, 3, 1))), ["x"]).validate("t")
    assert raw.values.dtype == torch.float32


@pytest.mark.parametrize("field, value", [("window_start", torch.arange(39)), ("labels", torch.zeros(40)),
                                          ("window_start", [0, 1])])
def test_per_series_fields_have_one_integer_per_series(field, value):
    """A window_start one short was read by split_by_time as indices into the windows: a silent mis-split."""
    times = torch.arange(16.0)
    raw = RawSeries(times, torch.zeros(40, 16, 1), ["y"], **{field: value})
    with pytest.raises(DataError, match=rf"{field} must be an integer tensor of shape \(40,\)"):
        raw.validate("src")
