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


def test_time_split_leaves_no_window_straddling_two_splits():
    # Checked on the windows' own spans, not against split_by_time: every training window ends before any validation
    # window starts, and every validation window before any test window; only windows across a cut are dropped.
    source = _Windows(n=1000, length=8)
    dm = TimeSeriesDataModule(source, batch_size=32, split_by="time", normalize="none", seed=3)
    dm.setup()
    starts = {split: _starts(dm, split) for split in ("train", "val", "test")}
    assert all(len(s) > 0 for s in starts.values())
    assert int(starts["train"].max()) + source.length <= int(starts["val"].min())
    assert int(starts["val"].max()) + source.length <= int(starts["test"].min())
    used = torch.cat(list(starts.values()))
    assert len(used.unique()) == len(used)  # no window in two splits
    assert source.n - len(used) <= 2 * (source.length - 1)  # at most the windows across the two cuts are dropped
    assert abs(len(starts["train"]) - 0.8 * source.n) <= source.length


def test_normaliser_is_fitted_on_the_training_split_only():
    # A drifting series (value = position): the later splits lie far above the training one. Statistics of the
    # training windows alone make the training split mean 0 and std 1 (per channel, missing values ignored), while
    # the test split, normalised with them, stays far above 0.
    source = _Windows(n=1000, length=8)
    load = source.load

    def with_gaps():
        raw = load()
        raw.values[::5, 2] = float("nan")
        return raw

    source.load = with_gaps
    dm = TimeSeriesDataModule(source, batch_size=32, split_by="time", normalize="standard", seed=3)
    dm.setup()
    train_raw = source.load().values[dm.split_indices["train"]]
    torch.testing.assert_close(dm.normalizer.shift, train_raw.nanmean((0, 1)), rtol=1e-6, atol=0)
    values = dm.train[..., 1:]
    observed = values[~torch.isnan(values)]
    assert abs(float(observed.mean())) < 1e-4 and abs(float(observed.std(unbiased=False)) - 1) < 1e-4
    assert float(dm.test[..., 1:].nanmean()) > 1.5  # the test period was not part of the fit
    torch.testing.assert_close(dm.normalizer.inverse(dm.test[..., 1:]),
                               source.load().values[dm.split_indices["test"]], equal_nan=True)


def test_initial_normalisation_uses_the_first_times_statistics_as_the_papers_ou_code():
    """data.normalize=initial (experiment=ou_sdegan_paper): torchsde's examples/sde_gan.py normalises the OU data by
    the mean and std of the t = 0 values, not of all times; the later values then lie far above 1."""
    import pytest

    from neuralsde.data.ou import OUSource
    from neuralsde.data.preprocessing import Normalizer
    from neuralsde.errors import DataError

    dm = TimeSeriesDataModule(OUSource(n_paths=512, t_size=64), batch_size=32, normalize="initial", seed=0)
    dm.setup()
    train_raw = dm.source.load().values[dm.split_indices["train"]]
    torch.testing.assert_close(dm.normalizer.shift, train_raw[:, 0].nanmean(0), rtol=1e-6, atol=1e-7)
    first = dm.train[:, 0, 1]
    first = first[~torch.isnan(first)]
    assert abs(float(first.mean())) < 1e-5 and abs(float(first.std(unbiased=False)) - 1) < 1e-5
    assert float(dm.train[:, -1, 1].nanmean()) > 15  # the OU mean drifts to about 10.6 in data units
    values = torch.tensor([[[float("nan")], [1.0]], [[float("nan")], [2.0]]])
    with pytest.raises(DataError, match="no observed value at the first time.*data.normalize=standard"):
        Normalizer.fit(values, "initial")


def test_a_single_series_is_refused_with_the_windowing_fix(tmp_path):
    """data=csv on one long series (no window_length) gave one series: the batch-size error advised
    data.batch_size<=1, after which validation failed ("the unbiased MMD needs at least 2")."""
    import pytest

    from neuralsde.data.csv_source import CSVSource
    from neuralsde.errors import DataError

    path = tmp_path / "long.csv"
    path.write_text("a\n" + "".join(f"{i}\n" for i in range(100)))
    dm = TimeSeriesDataModule(CSVSource(str(path)), batch_size=1)
    with pytest.raises(DataError, match="1 series of 100 times.*data.source.window_length=.*data.split_by=time"):
        dm.setup()
    windows = TimeSeriesDataModule(CSVSource(str(path), window_length=10), batch_size=8, split_by="time")
    windows.setup()
    assert windows.train.shape[1:] == (10, 2)


def test_figures_get_the_datas_own_times_as_sample_py_writes_them(monkeypatch):
    # Lorenz observed on [0, 2]: samples.png, reconstruction.png and marginals.png put 0..99 (the index time
    # channel) on an axis labelled "time", while sample.py wrote times 0..2.
    from types import SimpleNamespace

    import neuralsde.callbacks as callbacks
    from neuralsde.data.lorenz import LorenzSource

    dm = TimeSeriesDataModule(LorenzSource(n_paths=20, n_times=11, t_end=2.0, dt=0.01), batch_size=4)
    dm.setup("fit")
    assert dm.times[-1] == 10  # the time channel: the observation index
    shown = dm.to_plot_units(dm.val)
    assert torch.allclose(shown[0, :, 0], torch.linspace(0, 2, 11))
    assert torch.allclose(shown[..., 1:], dm.to_data_units(dm.val)[..., 1:], equal_nan=True)

    drawn = {}
    monkeypatch.setattr(callbacks, "plot_samples", lambda real, fake, *a, **k: drawn.update(real=real, fake=fake))
    monkeypatch.setattr(callbacks, "log_figure", lambda *a, **k: None)
    module = SimpleNamespace(sample=lambda n, generator=None: dm.val[:n], family="test", steps_taken=1)
    callbacks.SamplePlotCallback(out_dir="unused", n_paths=3)._plot(SimpleNamespace(datamodule=dm), module, "samples")
    assert torch.allclose(drawn["real"][0, :, 0], torch.linspace(0, 2, 11))
    assert torch.allclose(drawn["fake"][0, :, 0], torch.linspace(0, 2, 11))


def test_fill_missing_gives_torchcdes_values_bit_for_bit(monkeypatch):
    # interior, leading and trailing gaps, whole channels missing, one shared grid or per-path times, both dtypes
    import torchcde

    from neuralsde.data.interpolation import fill_missing, torchcde_fill

    library, coeffs = [], torchcde.linear_interpolation_coeffs  # the reference must be torchcde's own fill
    monkeypatch.setattr(torchcde, "linear_interpolation_coeffs", lambda *a, **k: library.append(1) or coeffs(*a, **k))
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for shared in (True, False):
            for frac in (0.1, 0.5, 0.9):
                t = torch.cumsum(torch.rand(17, generator=gen, dtype=dtype) + 0.01, 0).expand(40, 17)
                t = t if shared else t + torch.rand(40, 1, generator=gen, dtype=dtype)
                values = 3 * torch.randn(40, 17, 3, generator=gen, dtype=dtype)
                values[torch.rand(values.shape, generator=gen) < frac] = float("nan")
                values[0, :, 1] = float("nan")
                x = torch.cat([t.unsqueeze(-1), values], dim=-1)
                filled = fill_missing(x)
                assert torch.equal(filled, torchcde_fill(x)), (dtype, shared, frac)
                assert not torch.isnan(filled).any() and (filled[0, :, 2] == 0).all()
    assert len(library) == 2 * 2 * 3


def test_fill_missing_does_not_loop_over_paths(monkeypatch):
    # torchcde fills one (path, channel) at a time in Python: 10 s of the default run's set-up (OU's 8192 paths)
    import torchcde.interpolation_linear as linear

    from neuralsde.data.interpolation import fill_missing, torchcde_fill

    calls = []
    scalar = linear._linear_interpolation_coeffs_with_missing_values_scalar
    monkeypatch.setattr(linear, "_linear_interpolation_coeffs_with_missing_values_scalar",
                        lambda *a: calls.append(1) or scalar(*a))
    x = torch.cat([torch.arange(8.0).expand(64, 8).unsqueeze(-1), torch.randn(64, 8, 2)], dim=-1)
    x[:, 3, 1:] = float("nan")
    assert not torch.isnan(fill_missing(x)).any()
    assert calls == []
    torchcde_fill(x)  # the counter does see a loop: torchcde fills each (path, channel), time included, alone
    assert len(calls) == 64 * 3


def test_an_empty_validation_or_test_split_is_said():
    """Three series split 0.8/0.1/0.1 gave 2/0/1: validation then ran on training paths, silently."""
    import warnings

    def source(n):
        src = _Windows(n=n)
        src.load = lambda: RawSeries(torch.arange(8.0), torch.randn(n, 8, 1), ["x"])
        return src

    said = {}
    for n, fractions in ((3, [0.8, 0.1, 0.1]), (30, [0.8, 0.1, 0.1]), (30, [0.9, 0.1, 0.0])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dm = TimeSeriesDataModule(source(n), batch_size=2, normalize="none", split_fractions=fractions)
            dm.setup()
        said[n, fractions[2]] = [str(w.message) for w in caught if "split is empty" in str(w.message)]
        assert len(dm.val) == (0 if n == 3 else 3)
    assert said[30, 0.1] == [] and said[30, 0.0] == [] and len(said[3, 0.1]) == 1  # a fraction of 0 is deliberate
    said[3] = said[3, 0.1]
    assert said[3][0].startswith("The validation split is empty (3 series, data.split_fractions=[0.8, 0.1, 0.1])")
    assert "): validation figures come from training paths. Fix: use more series" in said[3][0]


def test_an_empty_split_by_time_names_windows_and_the_window_length():
    # split by time, windows straddling a cut are dropped: 33 windows of 8 left validation and test empty, and the
    # warning counted "33 series" and asked for more series, which one long series cannot give
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TimeSeriesDataModule(_Windows(n=33), batch_size=2, normalize="none", split_by="time").setup()
    said = [str(w.message) for w in caught if "empty" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("The validation and test splits are empty (33 windows,")
    assert "Fix: use a longer series or shorter windows (data.source.window_length)" in said[0]
