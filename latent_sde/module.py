"""LatentSDE: the LightningModule of the latent SDE VAE (Li et al. 2020; reversible Heun as in Kidger et al. 2021)."""
from __future__ import annotations

import dataclasses
import warnings

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from latent_sde.components.decoder import Decoder
from latent_sde.components.encoder import Encoder
from latent_sde.components.sdes import LatentSDEFunc, PriorSDE
from latent_sde.support import check_logqp_support, check_options, check_section_keys, kl_normal
from neuralsde.brownian import draw_entropy
from neuralsde.data.interpolation import fill_missing
from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import CheckpointError, bad_option, check_bool
from neuralsde.module_base import GenerativeModule
from neuralsde.optim_options import check_optimizer_options
from neuralsde.solver import SolverConfig, sdeint

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
OWN_OPTIMIZER_KEYS = ("name", "lr", "lr_decay", "diffusion_lr_factor")  # read here; the rest go to the optimiser


class DegenerateDiffusionWarning(UserWarning):
    """The learned diffusion collapsed: the latent SDE is turning into an ODE."""


class LatentSDE(GenerativeModule):
    """Latent SDE VAE: encoder -> q(z0) and context; posterior SDE solved with ``logqp=True``; decoder likelihood.

    Loss: ``-(log_lik - beta * (KL_path + KL_z0))`` per series, averaged over the batch, with ``beta`` rising
    linearly from 0 to 1 over ``kl_anneal_steps``. Logged ``elbo`` is always the un-annealed bound.
    """

    family = "latent_sde"

    def __init__(self, times: torch.Tensor, normalizer: Normalizer, solver: SolverConfig | dict, encoder: dict,
                 latent_size: int = 4, context_size: int = 16, hidden_size: int = 32, num_layers: int = 2,
                 diffusion: dict | None = None, likelihood: dict | None = None, learn_prior_z0: bool = True,
                 kl_anneal_steps: int = 100, optimizer: dict | None = None, train_steps: int = 300,
                 diffusion_warn_threshold: float = 1e-2, val_seed: int = 0, skip_nonfinite: bool = False,
                 sample_observation_noise: bool = False):
        super().__init__(times, normalizer, train_steps, skip_nonfinite)
        self.solver = solver if isinstance(solver, SolverConfig) else SolverConfig(**solver)
        self.solver.check_grid(torch.arange(self.t_size, dtype=torch.float32))
        check_logqp_support(self.solver)
        if self.solver.compile is not None:
            raise bad_option("solver.compile", self.solver.compile, "null for the latent SDE (compiling its "
                             "fields is implemented for the SDE-GAN only)", "set solver.compile=null")
        check_section_keys("model.diffusion", diffusion or {}, ("hidden_size", "floor", "scale"))
        check_section_keys("model.likelihood", likelihood or {}, ("kind", "scale", "learn_scale"))
        check_section_keys("model.encoder", encoder, ("kind", "hidden_size", "num_layers", "mask"))
        diffusion = {"hidden_size": 16, "floor": 1e-3, "scale": 1.0, **(diffusion or {})}
        likelihood = {"kind": "gaussian", "scale": 0.1, "learn_scale": True, **(likelihood or {})}
        optimizer = {"name": "adam", "lr": 1e-2, "lr_decay": 0.999, "diffusion_lr_factor": 1.0, **(optimizer or {})}
        check_options(latent_size=latent_size, context_size=context_size, hidden_size=hidden_size,
                      num_layers=num_layers, diffusion=diffusion, optimizer=optimizer, kl_anneal_steps=kl_anneal_steps,
                      learn_prior_z0=learn_prior_z0, diffusion_warn_threshold=diffusion_warn_threshold,
                      val_seed=val_seed)
        check_bool("model.sample_observation_noise", sample_observation_noise)
        if optimizer["name"] not in OPTIMIZERS:
            raise bad_option("model.optimizer.name", optimizer["name"], f"one of {sorted(OPTIMIZERS)}",
                             "set model.optimizer.name=adam")
        check_optimizer_options(OPTIMIZERS[optimizer["name"]], optimizer["name"],
                                {k: v for k, v in optimizer.items() if k not in OWN_OPTIMIZER_KEYS},
                                float(optimizer["lr"]))
        self.save_hyperparameters({"solver": dataclasses.asdict(self.solver), "encoder": dict(encoder),
                                   "latent_size": latent_size, "context_size": context_size,
                                   "hidden_size": hidden_size, "num_layers": num_layers, "diffusion": diffusion,
                                   "likelihood": likelihood, "learn_prior_z0": learn_prior_z0,
                                   "kl_anneal_steps": kl_anneal_steps, "optimizer": optimizer,
                                   "train_steps": train_steps, "diffusion_warn_threshold": diffusion_warn_threshold,
                                   "val_seed": val_seed, "skip_nonfinite": skip_nonfinite,
                                   "sample_observation_noise": sample_observation_noise})
        c, t = self.data_size, self.t_size
        self.encoder = Encoder(c, context_size, latent_size, t, solver=self.solver, **encoder)
        self.sde = LatentSDEFunc(latent_size, context_size, hidden_size, num_layers, diffusion["hidden_size"],
                                 diffusion["floor"], diffusion["scale"], t)
        self.decoder = Decoder(latent_size, c, **likelihood)
        pz0 = torch.zeros(2, latent_size)
        if learn_prior_z0:
            self.pz0 = nn.Parameter(pz0)
        else:
            self.register_buffer("pz0", pz0)
        self.kl_anneal_steps, self.optimizer_cfg = int(kl_anneal_steps), optimizer
        self.diffusion_warn_threshold, self.val_seed = float(diffusion_warn_threshold), int(val_seed)
        self._warned_degenerate = False
        self.sample_observation_noise = sample_observation_noise  # sample.py's observation_noise= sets it
        # Sampling needs no gradients through the solver: the direct solve gives the same forward values.
        self.sample_solver = dataclasses.replace(self.solver, adjoint=False)

    # ----- the model -----
    def _ts(self, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.t_size, device=like.device, dtype=like.dtype)

    def posterior(self, paths: torch.Tensor, filled: torch.Tensor, generator: torch.Generator | None = None):
        """paths (NaN where missing), filled: ``(batch, T, 1 + C)`` -> latent path ``zs`` ``(batch, T, latent)``,
        path KL ``(batch,)``, z0 KL ``(batch,)``."""
        context, mean, log_std = self.encoder(paths, filled)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z0 = mean + log_std.exp() * eps
        # The context enters the drift as an attribute: name it in adjoint_params so that the adjoint returns its
        # gradient (and the encoder learns through it). It must stay set until backward has run: the adjoint's
        # backward solve evaluates the drift again; on_train_batch_end clears it.
        self.sde.set_context(context)
        zs, log_ratio = sdeint(self.sde, z0, self._ts(z0), self.solver, entropy=draw_entropy(generator),
                               adjoint_params=tuple(self.sde.parameters()) + (context,), logqp=True)
        kl_z0 = kl_normal(mean, log_std, self.pz0[0], self.pz0[1]).sum(-1)
        return zs, log_ratio.sum(-1), kl_z0

    def elbo_terms(self, paths: torch.Tensor, filled: torch.Tensor, generator: torch.Generator | None = None):
        """-> ``(log_lik, kl, zs)``: ``(batch,)``, ``(batch,)``, ``(batch, T, latent)``; one posterior sample."""
        paths, filled = self.check_input_paths(paths, "paths"), self.check_input_paths(filled, "filled")
        zs, kl_path, kl_z0 = self.posterior(paths, filled, generator)
        return self.decoder.log_likelihood(zs, paths[..., 1:]), kl_path + kl_z0, zs

    def _with_time(self, values: torch.Tensor) -> torch.Tensor:
        t = self.times.to(values).view(1, -1, 1).expand(values.size(0), -1, 1)
        return torch.cat([t, values], dim=-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               observation_noise: bool | None = None) -> torch.Tensor:
        """``n`` paths ``(n, T, 1 + C)`` from the prior (z0 ~ p(z0), prior SDE, decoder mean), normalised units,
        without gradients. With ``observation_noise`` (None: ``self.sample_observation_noise``, the config's
        ``model.sample_observation_noise``) the likelihood's noise is added: draws of the observations rather than
        of the noiseless decoded path. It is drawn from a stream split off ``generator`` (``_split_off``), so a seed
        gives the same decoded paths either way, in this call and in later ones."""
        self.check_n(n)
        mean, log_std = self.pz0[0], self.pz0[1]
        eps = torch.randn((n, mean.numel()), generator=generator, dtype=mean.dtype).to(mean.device)
        z0 = mean + log_std.exp() * eps
        zs = sdeint(PriorSDE(self.sde), z0, self._ts(z0), self.sample_solver, entropy=draw_entropy(generator))
        values = self.decoder(zs)
        noisy = self.sample_observation_noise if observation_noise is None else observation_noise
        if noisy:
            values = self.decoder.add_observation_noise(values, _split_off(generator))
        return self._with_time(values)

    @torch.no_grad()
    def reconstruct(self, paths: torch.Tensor, filled: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder mean along one posterior sample: paths ``(batch, T, 1 + C)`` -> ``(batch, T, 1 + C)``."""
        paths = self.check_input_paths(paths, "paths")
        filled = fill_missing(paths) if filled is None else self.check_input_paths(filled, "filled")
        context, mean, log_std = self.encoder(paths, filled)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        self.sde.set_context(context)
        try:
            zs = sdeint(self.sde, mean + log_std.exp() * eps, self._ts(mean), self.sample_solver,
                        entropy=draw_entropy(generator))
        finally:
            self.sde.set_context(None)
        return self._with_time(self.decoder(zs))

    # ----- training -----
    def kl_weight(self) -> float:
        if self.kl_anneal_steps <= 0:
            return 1.0
        return min(1.0, float(self.steps_taken) / self.kl_anneal_steps)

    def on_train_start(self) -> None:
        super().on_train_start()
        # The weight at the last step is (train_steps - 1) / kl_anneal_steps: a short run (model.train_steps=50 at the
        # default 100) trained a down-weighted KL to the end, and its prior samples, which every metric scores, came
        # from a prior the posterior was never held to; val/elbo (always the full bound) did not show why.
        final = min(1.0, (self.train_steps - 1) / self.kl_anneal_steps) if self.kl_anneal_steps > 0 else 1.0
        if final < 1.0 and not self.trainer.fast_dev_run:
            rank_zero_warn(f"model.kl_anneal_steps={self.kl_anneal_steps} is not below model.train_steps="
                           f"{self.train_steps}: the KL weight reaches only {final:.3g} at the last step, so training "
                           "never optimises the ELBO itself. Fix: model.kl_anneal_steps<"
                           f"{self.train_steps} (e.g. {max(self.train_steps // 3, 1)}), or more model.train_steps.")

    def diffusion_mean(self, zs: torch.Tensor) -> torch.Tensor:
        """Mean diffusion along latent paths ``(batch, T, latent)``: the collapse diagnostic."""
        with torch.no_grad():
            t = (self._ts(zs) * self.sde.time_scale).view(1, -1, 1).expand(zs.size(0), -1, 1)
            return self.sde.diffusion(t.reshape(-1, 1), zs.reshape(-1, zs.size(-1))).mean()

    def _check_diffusion(self, value: float) -> None:
        if value < self.diffusion_warn_threshold and not self._warned_degenerate:
            self._warned_degenerate = True
            warnings.warn(
                f"train/diffusion_mean={value:.3g} fell below model.diffusion_warn_threshold="
                f"{self.diffusion_warn_threshold} at training step {self.steps_taken}: the latent SDE is "
                "degenerating to an ODE. Usual remedies: a larger fixed floor (model.diffusion.floor=0.05), a longer "
                "KL annealing (model.kl_anneal_steps), a lower learning rate for the diffusion "
                "(model.optimizer.diffusion_lr_factor=0.1), or more observation noise (model.likelihood.scale, or "
                "model.likelihood.learn_scale=false).", DegenerateDiffusionWarning, stacklevel=2)

    def train_batch(self, batch):
        """One training step (the base class's ``training_step`` counts it): returns the loss, or None to skip."""
        paths, filled = batch
        log_lik, kl, zs = self.elbo_terms(paths, filled)
        beta = self.kl_weight()
        loss = -(log_lik - beta * kl).mean()
        if not self.check_finite("train/loss", loss):
            return None
        if self.writes_logs():  # the diagnostic costs a diffusion evaluation over every path and a host read
            diff = self.diffusion_mean(zs)
            self._check_diffusion(float(diff))
            n = paths.size(0)
            self.log_dict({"train/loss": loss.detach()}, prog_bar=True, batch_size=n, sync_dist=True)
            self.log_dict({"train/elbo": (log_lik - kl).mean().detach(), "train/log_lik": log_lik.mean().detach(),
                           "train/kl": kl.mean().detach(), "train/kl_weight": beta, "train/diffusion_mean": diff,
                           "train/step": float(self.steps_taken + 1)}, batch_size=n, sync_dist=True)
        return loss

    def _batch_elbo(self, paths, filled, batch_idx: int):
        # A fixed seed per batch: successive validations compare the same z0 noise and Brownian sample.
        generator = torch.Generator().manual_seed(self.val_seed + batch_idx)
        with torch.no_grad():
            log_lik, kl, zs = self.elbo_terms(paths, filled, generator)
        self.sde.set_context(None)
        return log_lik, kl, zs

    @torch.no_grad()
    def split_elbo(self, loader) -> dict[str, float]:
        """``elbo``, ``log_lik`` and ``kl`` per path over every batch ``(paths, filled)`` of ``loader`` (the data
        module's test loader), with the test stage's seeds and weighting: ``eval.py`` reports the ELBO, this family's
        own figure, as the training run's ``test/elbo`` (it printed the sample metrics alone)."""
        was_training = self.training
        self.eval()
        sums, n = torch.zeros(3, dtype=torch.float64), 0
        for batch_idx, (paths, filled) in enumerate(loader):
            log_lik, kl, _ = self._batch_elbo(paths.to(self.device, self.dtype), filled.to(self.device, self.dtype),
                                              batch_idx)
            sums += torch.stack([(log_lik - kl).sum(), log_lik.sum(), kl.sum()]).double().cpu()
            n += paths.size(0)
        self.train(was_training)
        return dict(zip(("elbo", "log_lik", "kl"), (sums / max(n, 1)).tolist(), strict=True))

    def _eval_step(self, batch, batch_idx, stage: str) -> None:
        paths, filled = batch
        log_lik, kl, zs = self._batch_elbo(paths, filled, batch_idx)
        n = paths.size(0)
        self.log(f"{stage}/elbo", (log_lik - kl).mean(), prog_bar=stage == "val", batch_size=n, sync_dist=True)
        self.log(f"{stage}/log_lik", log_lik.mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/kl", kl.mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/diffusion_mean", self.diffusion_mean(zs), batch_size=n, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "test")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sde.set_context(None)  # release this batch's graph
        super().on_train_batch_end(outputs, batch, batch_idx)

    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        cls = OPTIMIZERS[cfg.pop("name")]
        lr, decay, factor = float(cfg.pop("lr")), float(cfg.pop("lr_decay")), float(cfg.pop("diffusion_lr_factor"))
        diffusion = list(self.sde.diffusion.parameters())
        ids = {id(p) for p in diffusion}
        groups = [{"params": [p for p in self.parameters() if id(p) not in ids]},
                  {"params": diffusion, "lr": lr * factor}]
        opt = cls(groups, lr=lr, **cfg)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "LatentSDE":
        """Rebuild from a checkpoint alone: ``times`` and the normaliser come from its state dict. A missing,
        corrupt or SDE-GAN checkpoint is a CheckpointError (an SDE-GAN one was "missing 1 required positional
        argument: 'encoder'"); ``neuralsde.checkpoints.load_model`` rebuilds either family with its data."""
        from neuralsde.checkpoints import read_checkpoint

        ckpt = read_checkpoint(path)
        if ckpt["neuralsde"]["family"] != cls.family:
            raise CheckpointError(f"{str(path)!r} holds a {ckpt['neuralsde']['family']!r} model, not a latent SDE. "
                                  "Fix: load it with neuralsde.checkpoints.load_model(path), which reads the family "
                                  "from the file.")
        state = ckpt["state_dict"]
        normalizer = Normalizer(state["normalizer.shift"], state["normalizer.scale"])
        return cls.load_from_checkpoint(path, map_location=map_location, times=state["times"], normalizer=normalizer)


def _split_off(generator: torch.Generator | None) -> torch.Generator | None:
    """A generator seeded from ``generator``'s state without advancing it: observation noise drawn from it leaves the
    caller's stream where a noiseless call leaves it, so sample.py's later batches (and any later call) decode the
    same paths with and without noise. None (the global stream) stays None."""
    if generator is None:
        return None
    fork = torch.Generator()
    fork.set_state(generator.get_state())
    return torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=fork)))
