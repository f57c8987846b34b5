"""Evaluation of any model that can sample paths: the metrics callback and the full test suite."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from neuralsde.callbacks import log_figure
from neuralsde.distributed import computed_on_rank_zero
from neuralsde.errors import check_int
from neuralsde.metrics import CHEAP_METRICS, METRICS, check_metric_names, compute_metrics
from neuralsde.metrics.plots import MAX_CHANNELS, check_max_channels
from neuralsde.metrics.suite import MetricOptions, make_options


def evaluate(model, datamodule, *, metrics, n_samples: int, seed: int, options: dict | MetricOptions | None = None,
             split: str = "test", reference: bool = False,
             progress: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Sample from ``model`` and compute the named metrics against the real ``split``.

    Returns the metrics and the paths used (``real_train``, ``real_test``, ``fake_train``, ``fake_test``, each
    ``(n, T, 1 + C)`` in normalised units). Metrics that train a classifier or a forecaster use up to
    ``n_samples`` training paths of each kind; the others compare ``real_test`` with ``fake_test``.
    ``reference``: also ``ref_<key>`` for those others, with training paths (NaNs filled, as the model is trained
    on them) in place of generated ones: the score of a model that reproduced its training data, which is far
    from zero where the split differs from the training split (a later period for windows split by time).
    ``progress``: a bar over the metrics (see ``compute_metrics``).
    """
    names = check_metric_names(metrics)
    options = options if isinstance(options, MetricOptions) else make_options(**(options or {}))
    # Lightning's test loop runs under inference mode; the classifier and forecaster need autograd.
    with torch.inference_mode(False), torch.enable_grad():
        values, paths = _evaluate(model, datamodule, names, n_samples, seed, options, split, progress)
        if reference and len(getattr(datamodule, split)):
            cheap = [n for n in names if not METRICS[n].trains]
            train = datamodule.filled["train"][:len(paths["real_test"])]
            ref = compute_metrics(cheap, None, paths["real_test"], None, train, seed=seed, options=options)
            values.update({f"ref_{k}": v for k, v in ref.items()})
    return values, paths


def check_n_samples(value, option: str) -> int:
    """``value`` as a path count of at least 2 (an unbiased MMD and a held-out split need two paths a side)."""
    return check_int(option, value, f"e.g. {option}=256", minimum=2, also=" (paths per evaluation)")


def _evaluate(model, datamodule, names, n_samples, seed, options, split, progress):
    gen = torch.Generator().manual_seed(seed)
    trains = any(METRICS[n].trains for n in names)
    if len(getattr(datamodule, split)):
        real_test = getattr(datamodule, split)[:n_samples]
        real_train = datamodule.train[:n_samples] if trains else None
    else:
        # no such split: score against training paths, and where a classifier or forecaster is trained, take its
        # real training paths from the other half, so that no real path is both trained on and tested on.
        cut = len(datamodule.train) // 2 if trains else 0
        real_test = datamodule.train[cut:][:n_samples]
        real_train = datamodule.train[:cut][:n_samples] if trains else None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        fake_test = model.sample(len(real_test), generator=gen).cpu()
        fake_train = model.sample(len(real_train), generator=gen).cpu() if trains else None
    model.train(was_training)
    values = compute_metrics(names, real_train, real_test, fake_train, fake_test, seed=seed, options=options,
                             progress=progress)
    paths = {"real_train": real_train, "real_test": real_test, "fake_train": fake_train, "fake_test": fake_test}
    return values, paths


def print_metrics_table(values: dict[str, float], heading: str) -> None:
    """Print ``values`` (keyed ``stage/name``) as a table under ``heading``; a ``stage/ref_name`` (for TSTR,
    TRTR) goes in that row's "training data" column: what reproducing the training split scores."""
    from rich.console import Console
    from rich.table import Table

    # the heading goes on its own line: as a title rich wraps it to the table's narrow width
    Console().print(heading, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("training data", justify="right")
    for key, value in values.items():
        stage, _, name = key.rpartition("/")
        if name.startswith("ref_") or name == "trtr_loss":
            continue
        ref_name = "trtr_loss" if name == "tstr_loss" else f"ref_{name}"  # TRTR: the forecaster trained on real data
        ref = values.get(f"{stage}/{ref_name}")
        table.add_row(key, f"{value:.5g}", "" if ref is None else f"{ref:.5g}")
    Console().print(table)


class MetricsCallback(pl.Callback):
    """Cheap metrics (``val/...``) at each validation, on a fixed validation sample and a fixed generator
    seed, from the averaged generator; the full suite (``test/...``) at ``trainer.test``; plots of
    marginals, autocorrelation and the metric history at the end, as PNG and (with wandb) images."""

    def __init__(self, out_dir: str, val_metrics=CHEAP_METRICS, test_metrics=tuple(METRICS), n_samples: int = 256,
                 seed: int = 0, options: dict | None = None, plot_max_channels: int | None = MAX_CHANNELS):
        self.out_dir = out_dir
        self.val_metrics = check_metric_names(val_metrics, allow_training=False)
        self.test_metrics = check_metric_names(test_metrics)
        self.n_samples = check_n_samples(n_samples, "callbacks.metrics.n_samples")
        # parsed and checked once, before training (a bad value stopped a run mid-way), for every stage and figure
        self.seed, self.options = seed, make_options(where="callbacks.metrics.options.", **dict(options or {}))
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.plot_max_channels = check_max_channels(plot_max_channels, "callbacks.metrics.plot_max_channels")

    def _log(self, module, stage: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            if value is not None:  # equal on every rank: the mean is a no-op
                module.log(f"{stage}/{key}", float(value), sync_dist=True)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        # every rank would compute the same values (the same weights, split and seed): rank 0 does, once
        values = computed_on_rank_zero(lambda: evaluate(
            module, trainer.datamodule, metrics=self.val_metrics, n_samples=self.n_samples, seed=self.seed,
            options=self.options, split="val")[0])
        self._log(module, "val", values)

    def on_validation_end(self, trainer, module) -> None:
        """Every ``val/`` figure joins the history for ``metric_history.png``: this callback's sample metrics and the
        family's own (the latent SDE's ``val/elbo``, ``val/kl``, ...), which Lightning aggregates only after
        ``on_validation_epoch_end``."""
        if trainer.sanity_checking:
            return
        step = module.steps_taken
        for key, value in trainer.callback_metrics.items():
            if not key.startswith("val/") or not torch.is_tensor(value) or value.numel() != 1:
                continue
            points = self.history.setdefault(key, [])
            if not points or points[-1][0] != step:
                points.append((step, float(value)))

    def state_dict(self) -> dict:
        # In the checkpoint: a resumed run's metric_history.png spans the whole training, not only its own steps.
        return {"history": {key: list(points) for key, points in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {key: [tuple(p) for p in points] for key, points in state_dict.get("history", {}).items()}

    def on_test_epoch_end(self, trainer, module) -> None:
        bar = trainer.progress_bar_callback  # the full suite takes seconds to minutes: show which metric runs
        paths = {}  # rank 0's, for its figures

        def suite() -> dict[str, float]:
            values, used = evaluate(module, trainer.datamodule, metrics=self.test_metrics, n_samples=self.n_samples,
                                    seed=self.seed, options=self.options, split="test", reference=True,
                                    progress=bar is not None and not bar.is_disabled)
            paths.update(used)
            return values

        # the classifier, forecaster and MMD are trained and computed once, on rank 0, not once per process
        values = computed_on_rank_zero(suite)
        self._log(module, "test", values)
        if trainer.is_global_zero:
            self._plots(trainer, paths["real_test"], paths["fake_test"],
                        observation_noise=bool(getattr(module, "sample_observation_noise", False)))

    @rank_zero_only
    def _plots(self, trainer, real, fake, observation_noise: bool = False) -> None:
        from neuralsde.metrics.plots import plot_autocorrelation, plot_marginals, plot_metric_history
        out = Path(self.out_dir)
        dm = trainer.datamodule
        names = list(dm.channel_names)
        # every data channel, a row each, named and in data units (was channel 1 alone, labelled "channel 1")
        log_figure(trainer, plot_marginals(dm.to_plot_units(real), dm.to_plot_units(fake),
                                           channels=range(1, real.shape[-1]), channel_names=names,
                                           units="data units", max_channels=self.plot_max_channels,
                                           time_unit=dm.source_time_unit, observation_noise=observation_noise),
                   "marginals", out)
        log_figure(trainer, plot_autocorrelation(real, fake, channel_names=names, observation_noise=observation_noise),
                   "autocorrelation", out)
        history = {k: v for k, v in self.history.items() if k.startswith("val/")}  # intervals shade their metric
        if history:
            log_figure(trainer, plot_metric_history(history, self.options.ci), "metric_history", out)
