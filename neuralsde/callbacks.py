"""Rank-zero callbacks: sample plots saved as PNG and, with wandb, logged as images."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from neuralsde.metrics.plots import MAX_CHANNELS, check_max_channels
from neuralsde.plotting import plot_samples


def samples_title(module) -> str:
    """A sample figure's title: the family and step, and whether the samples carry observation noise (a latent SDE
    with ``model.sample_observation_noise``), which the drawn paths do not show."""
    noise = ", samples with observation noise" if getattr(module, "sample_observation_noise", False) else ""
    return f"{module.family}, step {module.steps_taken}{noise}"


def log_figure(trainer: pl.Trainer, fig, name: str, out_dir: str | Path, key: str | None = None) -> Path:
    """Save ``fig`` as ``out_dir/name.png``; also log it as ``wandb.Image`` under ``key`` (default ``name``) when a
    wandb logger is active."""
    out = Path(out_dir) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb
            # Through the logger, as Lightning logs the metrics: the image gets their x-axis value
            # (trainer/global_step, here the model's training step) and the next wandb row. An explicit
            # step=trainer.global_step (Lightning's optimiser steps) fell behind wandb's row counter whenever
            # more rows than steps were logged (latent SDE, log_every_n_steps=1) and wandb dropped the image.
            step = getattr(trainer.lightning_module, "steps_taken", trainer.global_step)
            logger.log_metrics({key or name: wandb.Image(str(out))}, step=step)
    plt.close(fig)
    return out


class SamplePlotCallback(pl.Callback):
    """Plots paths from the averaged generator beside real validation paths, every ``every_n_steps``
    training steps (0: only at the end of training) and at the end of training; the first ``max_channels``
    channels (None: all) a row each."""

    def __init__(self, out_dir: str, every_n_steps: int = 0, n_paths: int = 16, seed: int = 0,
                 max_channels: int | None = MAX_CHANNELS):
        self.out_dir, self.every_n_steps, self.n_paths, self.seed = out_dir, every_n_steps, n_paths, seed
        self.max_channels = check_max_channels(max_channels, "callbacks.sample_plot.max_channels")

    @rank_zero_only
    def _plot(self, trainer: pl.Trainer, module, name: str) -> None:
        real = trainer.datamodule.val if len(trainer.datamodule.val) else trainer.datamodule.train
        real = real[: self.n_paths]
        with torch.no_grad():
            fake = module.sample(self.n_paths, generator=torch.Generator().manual_seed(self.seed))
        to_units = trainer.datamodule.to_plot_units  # data units, the data's own times
        fig = plot_samples(to_units(real), to_units(fake.cpu()), trainer.datamodule.channel_names,
                           title=samples_title(module), max_channels=self.max_channels,
                           time_unit=trainer.datamodule.source_time_unit)
        # one wandb key for every step's figure: one panel whose step slider runs through training, not a panel per
        # samples_stepNNNNNN; the PNG files keep their step in the name
        log_figure(trainer, fig, name, self.out_dir, key="samples")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.steps_taken
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._plot(trainer, module, f"samples_step{step:06d}")

    def on_train_end(self, trainer, module) -> None:
        self._plot(trainer, module, "samples")
