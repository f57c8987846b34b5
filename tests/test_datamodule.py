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
