"""One LightningDataModule for every source: split, normalise, prepend time, batch."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from neuralsde.data.base import RawSeries
from neuralsde.data.batches import StepBatches
from neuralsde.data.interpolation import fill_missing
from neuralsde.data.preprocessing import (
    SPLIT_BY,
    Normalizer,
    check_batch_size,
    check_fractions,
    split_by_series,
    split_by_time,
    time_channel,
)
from neuralsde.errors import ConfigError, DataError, bad_option, check_int


class TimeSeriesDataModule(pl.LightningDataModule):
    """Batches ``(paths, filled)``, each ``(batch, T, 1 + C)``: time in channel 0, normalised values after it.

    ``paths`` keeps NaN where a value is missing (likelihoods and metrics mask them); ``filled`` is the same
    data with NaNs filled by linear interpolation in time (torchcde's ``linear_interpolation_coeffs``),
    computed once here because it costs more than a discriminator evaluation when done per batch.

    After ``setup()``: ``times`` ``(T,)`` (the time channel), ``source_times`` ``(T,)`` (the same observation
    times in the source's units, e.g. the CSV's; ``source_time_unit`` names that unit, e.g. "hour", or is None),
    ``data_size`` ``C``, ``channel_names``,
    ``normalizer`` (fitted on the training split only), and ``train``/``val``/``test`` tensors, each in a
    seeded random order whatever ``split_by`` (so that a prefix of a split is a random sample of it).
    """

    def __init__(self, source, batch_size: int = 128, split_fractions=(0.8, 0.1, 0.1), split_by: str = "series",
                 normalize: str = "standard", time_unit: str = "index", seed: int = 0, eval_batch_size: int = 1024,
                 num_workers: int = 0):
        super().__init__()
        if split_by not in SPLIT_BY:
            raise bad_option("data.split_by", split_by, f"one of {SPLIT_BY}", "set data.split_by=series")
        self.source = source
        # Checked here, before any data are loaded: eval_batch_size=0 reached torch's DataLoader only at the first
        # validation, after trainer.val_check_interval training steps; batch_size=abc was a bare int() ValueError.
        self.batch_size = check_int("data.batch_size", batch_size, "e.g. data.batch_size=128")
        self.eval_batch_size = check_int("data.eval_batch_size", eval_batch_size, "e.g. data.eval_batch_size=1024")
        self.fractions = check_fractions(split_fractions)
        self.split_by, self.normalize, self.time_unit = split_by, normalize, time_unit
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.raw: RawSeries | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.raw is not None:
            return
        raw = self.source.load()
        name = type(self.source).__name__
        if not isinstance(raw, RawSeries):
            raise DataError(f"{name}.load() returned {type(raw).__name__}: expected neuralsde.data.base.RawSeries"
                            "(times (T,), values (N, T, C), channel_names). Fix: return a RawSeries from load().")
        # every source's output is checked here, not only the built-in ones that call validate themselves
        raw = raw.validate(name)
        n, t_size, c = raw.values.shape
        if n < 2:  # e.g. a CSV of one long series: the batch-size error then advised a batch of 1, which fails later
            raise DataError(f"The data hold {n} series of {t_size} times: a generative model needs many series to "
                            "learn from (and to split into training, validation and test). Fix: cut one long series "
                            "into windows (data=csv: data.source.window_length=<times per series> and "
                            "data.split_by=time), or name the column that tells series apart (data.source.id_column).")
        self.raw = raw
        if self.split_by == "series":
            starts = None if raw.window_start is None else torch.unique(raw.window_start)  # sorted; stations share
            if starts is not None and len(starts) > 1 and int(starts.diff().min()) < t_size:
                rank_zero_warn("data.split_by=series on overlapping windows of one series: a window in the test "
                               "split shares observations with windows in the training split, so test figures are "
                               "optimistic. Fix: data.split_by=time.")
            idx = split_by_series(n, self.fractions, self.seed)
        else:
            if raw.window_start is None:
                raise ConfigError("data.split_by=time needs windows cut from one long series, but this source gives "
                                  "independent series. Fix: set data.split_by=series.")
            # Time decides which split a window is in, not its place in the split: each split comes in a seeded
            # random order, as split_by_series gives, since evaluation and plots read a prefix of a split as a
            # random sample of it (in time order the first 256 stride-1 windows of stocks span one year of 15).
            gen = torch.Generator().manual_seed(self.seed)
            idx = tuple(i[torch.randperm(len(i), generator=gen)]
                        for i in split_by_time(raw.window_start, t_size, self.fractions))
        train_raw = raw.values[idx[0]]
        if len(idx[0]) == 0:
            raise DataError(f"The training split is empty ({n} series, fractions {self.fractions}). "
                            "Fix: use more data or a larger training fraction.")
        check_batch_size(self.batch_size, len(idx[0]))
        # the loaders and metrics then fall back to another split: said, since those figures are not held out
        instead = {"validation": "training", "test": "validation and training" if len(idx[1]) else "training"}
        # a fraction of 0 asks for no such split; only one that rounded to no series is news
        empty = [name for name, i, share in zip(("validation", "test"), idx[1:], self.fractions[1:], strict=True)
                 if len(i) == 0 and share > 0]
        if empty:
            # split by time, windows are dropped at the splits' edges so that none shares observations: a short
            # series leaves whole splits empty, which more series would not mend
            what, more = (("windows", "a longer series or shorter windows (data.source.window_length)")
                          if self.split_by == "time" else ("series", "more series"))
            rank_zero_warn(f"The {' and '.join(empty)} split{'s are' if len(empty) == 2 else ' is'} empty ({n} "
                           f"{what}, data.split_fractions={list(self.fractions)}): "
                           + "; ".join(f"{name} figures come from {instead[name]} paths" for name in empty)
                           + f". Fix: use {more}, or larger validation and test fractions in data.split_fractions.")
        self.normalizer = Normalizer.fit(train_raw, self.normalize)
        self.times = time_channel(raw.times, self.time_unit)
        self.source_times = raw.times.double().clone()  # the observation times in the data's own units
        self.source_time_unit = raw.meta.get("time_unit")  # for the figures' time axes
        self.data_size, self.channel_names = c, list(raw.channel_names)
        self.split_indices = dict(zip(("train", "val", "test"), idx, strict=True))
        self._normalise_splits()

    def adopt_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Re-express the splits in another normalisation: a checkpoint's, the units its model works in. With data
        overridden for evaluation (``cfg_overrides``) the statistics fitted here differ from the training run's, and
        real and generated paths were compared in two different units."""
        own = self.normalizer
        if shift.shape != own.shift.shape:  # another channel count: the model's weights do not fit either, and
            return                          # loading them says so
        if torch.equal(shift.cpu(), own.shift.cpu()) and torch.equal(scale.cpu(), own.scale.cpu()):
            return
        self.normalizer.shift.copy_(shift)
        self.normalizer.scale.copy_(scale)
        self._normalise_splits()

    def _normalise_splits(self) -> None:
        """``train``/``val``/``test`` from the raw values in the normaliser's units, with the time channel, and
        ``filled``, their NaN-free copies (filled once here: it costs more than a discriminator evaluation)."""
        for name, i in self.split_indices.items():
            setattr(self, name, self._with_time(self.normalizer(self.raw.values[i])))
        self.filled = {name: fill_missing(getattr(self, name)) for name in self.split_indices}

    def _with_time(self, values: torch.Tensor) -> torch.Tensor:
        t = self.times.view(1, -1, 1).expand(values.size(0), -1, 1)
        return torch.cat([t, values], dim=-1)

    def to_data_units(self, paths: torch.Tensor) -> torch.Tensor:
        """``(batch, T, 1 + C)`` normalised paths to data units (time channel untouched)."""
        return torch.cat([paths[..., :1], self.normalizer.inverse(paths[..., 1:])], dim=-1)

    def to_plot_units(self, paths: torch.Tensor) -> torch.Tensor:
        """``to_data_units`` with the data's own observation times (``source_times``, as ``sample.py`` writes them)
        in channel 0, for figures: the time channel is the observation index under ``time_unit=index`` (Lorenz's
        0..99 for times 0..2, lobster's bar count for minutes)."""
        out = self.to_data_units(paths)
        out[..., 0] = self.source_times.to(device=out.device, dtype=out.dtype)
        return out

    def _loader(self, name: str, batch_size: int) -> DataLoader:
        data = TensorDataset(getattr(self, name), self.filled[name])
        return DataLoader(data, batch_size=batch_size, sampler=WholeSplit(data), num_workers=self.num_workers,
                          generator=_private_generator(self.seed))

    def train_dataloader(self) -> DataLoader:
        # Endless and resumable: a resumed run continues from the model's own step counter.
        module = self.trainer.lightning_module if self.trainer is not None else None
        start = getattr(module, "steps_taken", 0)
        data = StepBatches((self.train, self.filled["train"]), self.batch_size, self.seed, start)
        return DataLoader(data, batch_size=None, num_workers=0,  # in memory; workers would repeat batches
                          generator=_private_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if len(self.val) else "train", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if len(self.test) else "val", self.eval_batch_size)


class WholeSplit(DistributedSampler):
    """Every index of a split, in order, on every process: validation and test figures are those of one process.

    A ``DistributedSampler`` (of one replica) so that Lightning keeps it: with ``trainer.use_distributed_sampler``
    left at its default (``trainer=gpu trainer.devices=4``, or ``trainer=cpu trainer.devices=2``) Lightning gave each
    rank a share of the split padded with repeats, and ``test/elbo`` read -638.6 against -747.3 from one process on
    the same weights (ou_latent_sde, 2 steps). Training batches shard themselves (``StepBatches``)."""

    def __init__(self, dataset):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)


def _private_generator(seed: int) -> torch.Generator:
    # Creating a DataLoader iterator draws a seed from this generator, or from the global RNG when there is
    # none; evaluation loaders would then shift the training noise, and a resumed run would diverge.
    return torch.Generator().manual_seed(seed)
