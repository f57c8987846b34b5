"""``evaluate``: what it compares, and the training-data reference it logs beside each metric."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from neuralsde.data.base import RawSeries
from neuralsde.data.datamodule import TimeSeriesDataModule
from neuralsde.evaluation import evaluate
from neuralsde.metrics import CHEAP_METRICS, compute_metrics
from neuralsde.metrics.suite import make_options


class _Drifting:
    """Windows of one long random walk with an upward drift: a later split lies above the training one."""

    def load(self) -> RawSeries:
        gen = torch.Generator().manual_seed(0)
        walk = (0.05 + torch.randn(2000, generator=gen) * 0.1).cumsum(0)
        values = walk.unfold(0, 12, 1)[:, :, None].clone()
        values[::7, 3] = float("nan")  # missing values: the reference reads the filled training paths
        return RawSeries(torch.arange(12.0), values, ["x"], window_start=torch.arange(values.size(0)))


class _Replays(nn.Module):
    """A 'model' whose samples are the data module's filled training paths: it reproduces its training data."""

    def __init__(self, dm):
        super().__init__()
        self.dm = dm

    def sample(self, n, generator=None):
        return self.dm.filled["train"][:n]


@pytest.fixture(scope="module")
def drifting():
    dm = TimeSeriesDataModule(_Drifting(), batch_size=32, split_by="time", seed=0)
    dm.setup()
    return dm


def test_reference_is_the_score_of_reproducing_the_training_data(drifting):
    options = {"n_boot": 20}
    values, paths = evaluate(_Replays(drifting), drifting, metrics=CHEAP_METRICS, n_samples=128, seed=0,
                             options=options, reference=True)
    keys = [k for k in values if not k.startswith("ref_")]
    assert keys and all(values[f"ref_{k}"] == values[k] for k in keys)  # a model that replays it scores the same
    assert values["ref_marginal_w1"] > 1.0  # the test period lies above the training one (normalised units)
    direct = compute_metrics(["marginal_w1"], None, drifting.test[:128], None, drifting.filled["train"][:128],
                             options=make_options(**options))
    assert values["ref_marginal_w1"] == direct["marginal_w1"]
    plain, _ = evaluate(_Replays(drifting), drifting, metrics=["marginal_w1"], n_samples=128, seed=0)
    assert set(plain) == {"marginal_w1"}  # off unless asked for (validation does not pay for it)


def test_progress_names_each_metric_and_changes_no_value(drifting, capsys):
    real, fake = drifting.test[:64], drifting.filled["train"][:64]
    names, options = ["marginal_w1", "acf_error"], make_options(n_boot=10)
    quiet = compute_metrics(names, None, real, None, fake, options=options)
    assert capsys.readouterr().err == ""  # off by default: validation runs every few hundred steps
    shown = compute_metrics(names, None, real, None, fake, options=options, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and "metrics" in err and "0/2" in err and all(name in err for name in names)


@pytest.mark.parametrize("option, value, expected", [
    ("classifier", "lstm", "one of ('cde', 'gru')"), ("horizon", 1.5, "strictly between 0 and 1"),
    ("classifier_epochs", -1, "an integer >= 1"), ("sig_kind", "foo", "one of ('truncated', 'pde')"),
    ("lr", 0, "a positive number"), ("max_lag", 0, "a positive integer, or null"),
])
def test_bad_metric_option_values_are_refused_before_any_work(option, value, expected):
    from neuralsde.errors import ConfigError
    from neuralsde.evaluation import MetricsCallback

    with pytest.raises(ConfigError, match=rf"callbacks\.metrics\.options\.{option}=.* {re.escape(expected)}"):
        MetricsCallback("unused", options={option: value})  # at construction: before training
    with pytest.raises(ConfigError, match=rf"options\.{option}=.* {re.escape(expected)}"):
        make_options(**{option: value})  # eval.py's +options.X: before sampling or any metric
    assert make_options(sig_kind="pde", classifier="gru", horizon=0.25, max_lag=None).classifier == "gru"


class _Noise(nn.Module):
    """A 'model' that samples white noise on the data module's time grid."""

    def __init__(self, dm):
        super().__init__()
        self.times = dm.times

    def sample(self, n, generator=None):
        t = self.times.view(1, -1, 1).expand(n, -1, 1)
        return torch.cat([t, torch.randn(n, t.shape[1], 1, generator=generator)], dim=-1)


def test_without_a_test_split_no_real_path_is_both_trained_on_and_tested_on():
    from neuralsde.data.ou import OUSource

    dm = TimeSeriesDataModule(OUSource(n_paths=120, t_size=8), batch_size=16, split_fractions=(0.9, 0.1, 0.0), seed=0)
    dm.setup()
    assert len(dm.test) == 0  # the evaluation falls back on the training split
    _, paths = evaluate(_Noise(dm), dm, metrics=["tstr", "marginal_w1"], n_samples=64, seed=0,
                        options={"forecast_epochs": 1, "forecast_hidden": 4})
    train, test = paths["real_train"], paths["real_test"]
    assert len(train) >= 2 and len(test) >= 2
    shared = torch.isclose(train[:, None], test[None], equal_nan=True).flatten(2).all(-1)
    assert not shared.any()  # TRTR and the real/fake classifier would otherwise be scored in-sample


def test_metric_history_takes_the_familys_own_validation_figures():
    # metric_history.png of a latent SDE run showed the sample metrics but not val/elbo, its optimized_metric.
    from types import SimpleNamespace

    import torch

    from neuralsde.evaluation import MetricsCallback

    callback = MetricsCallback(out_dir="unused", n_samples=2)
    module = SimpleNamespace(steps_taken=5)
    for step, elbo in ((5, -300.0), (10, -200.0)):
        module.steps_taken = step
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={
            "val/elbo": torch.tensor(elbo), "val/marginal_w1": torch.tensor(0.5), "train/loss": torch.tensor(1.0)})
        callback.on_validation_end(trainer, module)
    assert callback.history["val/elbo"] == [(5, -300.0), (10, -200.0)]
    assert callback.history["val/marginal_w1"] == [(5, 0.5), (10, 0.5)]  # the sample metrics by the same route
    callback.on_validation_end(trainer, module)  # a second validation at step 10 adds no second point
    assert len(callback.history["val/elbo"]) == 2
    assert "train/loss" not in callback.history


@pytest.mark.parametrize("family", [[], ["experiment=ou_latent_sde"]])
def test_evaluation_draws_nothing_from_the_global_random_number_generators(tiny_cfg, family):
    # Under DDP rank 0 alone evaluates (neuralsde.distributed.computed_on_rank_zero): a draw here would leave the
    # ranks' global RNGs apart for the rest of training, and a checkpoint (rank 0's RNG) would resume rank 1 elsewhere.
    import random

    import numpy as np

    from neuralsde.metrics import METRICS
    from neuralsde.training import build

    datamodule, model = build(tiny_cfg(family))
    datamodule.setup()
    def states():
        name, keys, *position = np.random.get_state()  # the position moves on each draw, the keys once in 624
        return torch.get_rng_state(), torch.from_numpy(keys.copy()), position, random.getstate()

    before = states()
    evaluate(model, datamodule, metrics=tuple(METRICS), n_samples=32, seed=0, reference=True,
             options={"n_boot": 20, "classifier_epochs": 1, "forecast_epochs": 1})
    after = states()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2:] == after[2:]
