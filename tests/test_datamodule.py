"""The data module's splits: which windows go where, and in what order."""
from __future__ import annotations

import torch

from neuralsde.data.base import RawSeries
from neuralsde.data.datamodule import TimeSeriesDataModule
from neuralsde.data.preprocessing import split_by_time


class _Windows:
    """Stride-1 windows of one long series whose value is its position: a window's first value is its start."""

    def __init__(self, n: int = 1000, length: int = 8):
        self.n, self.length = n, length

    def load(self) -> RawSeries:
        starts = torch.arange(self.n)
        values = (starts.view(-1, 1) + torch.arange(self.length)).float().unsqueeze(-1)
        return RawSeries(torch.arange(float(self.length)), values, ["x"], window_start=starts)


def _starts(dm, split: str) -> torch.Tensor:
    return dm.source.load().window_start[dm.split_indices[split]]


def test_time_split_keeps_the_windows_of_each_split_but_in_seeded_random_order():
    source = _Windows()
    dm = TimeSeriesDataModule(source, batch_size=32, split_by="time", normalize="none", seed=3)
    dm.setup()
    expected = split_by_time(torch.arange(source.n), source.length, (0.8, 0.1, 0.1))
    for split, idx in zip(("train", "val", "test"), expected, strict=True):
        assert torch.equal(_starts(dm, split).sort().values, idx)  # time decides the membership
        assert torch.equal(getattr(dm, split)[:, 0, 1], _starts(dm, split).float())  # tensors follow the order
    # A prefix is a sample of the whole split, not its first weeks (evaluation reads the first 256 paths).
    head = _starts(dm, "train")[:64]
    train = expected[0]
    assert head.max() - head.min() > 0.8 * (train.max() - train.min())
    again = TimeSeriesDataModule(source, batch_size=32, split_by="time", normalize="none", seed=3)
    again.setup()
    other = TimeSeriesDataModule(source, batch_size=32, split_by="time", normalize="none", seed=4)
    other.setup()
    assert torch.equal(again.train, dm.train) and not torch.equal(other.train, dm.train)


def test_a_split_by_series_of_overlapping_windows_warns_of_the_leak():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TimeSeriesDataModule(_Windows(), batch_size=32, split_by="series", normalize="none").setup()
        disjoint = _Windows(n=100)
        disjoint.load = lambda: RawSeries(torch.arange(8.0), torch.zeros(100, 8, 1), ["x"],
                                          window_start=(torch.arange(100) // 2) * 8)  # two stations, whole days
        TimeSeriesDataModule(disjoint, batch_size=32, split_by="series", normalize="none").setup()
    leaks = [str(w.message) for w in caught if "overlapping windows" in str(w.message)]
    assert len(leaks) == 1 and "Fix: data.split_by=time" in leaks[0]
