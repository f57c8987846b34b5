"""Rank-zero callback saving the latent SDE's reconstruction/prior-sample figure at the end of training."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from latent_sde.plotting import plot_reconstruction
from neuralsde.callbacks import log_figure, samples_title
from neuralsde.metrics.plots import MAX_CHANNELS, check_max_channels


class LatentSDEPlotCallback(pl.Callback):
    """Saves ``out_dir/reconstruction.png`` (and logs it to wandb when active) at train end; data units.

    In the default callbacks, so that ``model=latent_sde`` under any experiment draws it (only the ``*_latent_sde``
    experiments listed it); a model without ``reconstruct`` (the SDE-GAN) is left alone."""

    def __init__(self, out_dir: str, n_paths: int = 8, seed: int = 0, name: str = "reconstruction",
                 max_channels: int | None = MAX_CHANNELS):
        self.out_dir, self.n_paths, self.seed, self.name = out_dir, int(n_paths), int(seed), name
        self.max_channels = check_max_channels(max_channels, "callbacks.latent_sde_plot.max_channels")

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        if not callable(getattr(module, "reconstruct", None)):
            return
        dm = trainer.datamodule
        split = "val" if len(dm.val) else "train"
        paths, filled = getattr(dm, split)[: self.n_paths], dm.filled[split][: self.n_paths]
        generator = torch.Generator().manual_seed(self.seed)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            # The data module holds float32; under trainer.precision=64-true the model is float64 and refuses them.
            rec = module.reconstruct(paths.to(module.device, module.dtype), filled.to(module.device, module.dtype),
                                     generator=generator)
            prior = module.sample(self.n_paths, generator=generator)
        module.train(was_training)
        to_units = dm.to_plot_units  # data units, the data's own times
        fig = plot_reconstruction(to_units(paths), to_units(rec.cpu()), to_units(prior.cpu()), dm.channel_names,
                                  title=samples_title(module), max_channels=self.max_channels,
                                  time_unit=dm.source_time_unit)
        log_figure(trainer, fig, self.name, self.out_dir)
