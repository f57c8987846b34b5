"""SDEGAN: the LightningModule that trains generator and discriminator with the paper's recipe."""
from __future__ import annotations

import dataclasses

import torch
from pytorch_lightning.utilities import rank_zero_warn

from neuralsde.averaging import Averaged
from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import bad_option, check_int, check_number
from neuralsde.lipschitz import check_method, clip_weights, gradient_penalty
from neuralsde.module_base import GenerativeModule
from neuralsde.optim_options import check_optimizer_options
from neuralsde.solver import SolverConfig
from sdegan.components.discriminator import Discriminator
from sdegan.components.generator import Generator

UPDATES = ("simultaneous", "alternating")
OPTIMIZERS = {"adadelta": torch.optim.Adadelta, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class SDEGAN(GenerativeModule):
    """Wasserstein SDE-GAN with manual optimisation.

    ``update=simultaneous`` (the paper's code): one backward pass of ``E[D(fake)] - E[D(real)]``, generator
    gradients negated, both optimisers stepped. ``update=alternating``: a discriminator step every batch and a
    generator step every ``n_critic`` batches. After each discriminator step its weights are clipped
    (``lipschitz=clip``), or a gradient penalty is added to its loss (``lipschitz=gradient_penalty``).
    ``cuda_graph``: the simultaneous update's solves and backward pass run as one captured CUDA graph
    (``neuralsde.cuda_graphs``); the optimiser steps, clipping and averaging stay eager.
    """

    family = "sdegan"
    divergence_causes = "a learning rate too high, Lipschitz control off, or NaNs reaching the model from the data"

    def __init__(self, times: torch.Tensor, normalizer: Normalizer, solver: SolverConfig | dict,
                 generator: dict, discriminator: dict, optimizer: dict, train_steps: int = 500,
                 swa_start: int = 250, lipschitz: str = "clip", gp_lambda: float = 10.0,
                 update: str = "simultaneous", n_critic: int = 5, skip_nonfinite: bool = False,
                 cuda_graph: bool = False):
        super().__init__(times, normalizer, train_steps, skip_nonfinite)
        if update not in UPDATES:
            raise bad_option("model.update", update, f"one of {UPDATES}", "set model.update=simultaneous")
        check_int("model.n_critic", n_critic, "e.g. model.n_critic=5")
        # as the latent SDE's options: 2.5 was truncated to 2, and inf made the penalty's loss non-finite
        check_int("model.swa_start", swa_start, "e.g. model.swa_start=250", minimum=0)
        check_number("model.gp_lambda", gp_lambda, "e.g. model.gp_lambda=10", minimum=0)
        self.solver = solver if isinstance(solver, SolverConfig) else SolverConfig(**solver)
        self.solver.check_grid(torch.arange(self.t_size, dtype=torch.float32))
        self.lipschitz, self.gp_lambda = check_method(lipschitz), float(gp_lambda)
        self.update, self.n_critic = update, int(n_critic)
        self._last_g_loss: torch.Tensor | float | None = None
        self.optimizer_cfg = dict(optimizer)
        name = self.optimizer_cfg.get("name", "adadelta")
        if name not in OPTIMIZERS:  # here, not at the fit's start: refused before the data are prepared
            raise bad_option("model.optimizer.name", name, f"one of {sorted(OPTIMIZERS)}",
                             "set model.optimizer.name=adadelta")
        for key in ("g_lr", "d_lr"):  # finite too: inf passed a "> 0" test, and the first step made every weight NaN
            check_number(f"model.optimizer.{key}", self.optimizer_cfg.get(key), f"e.g. model.optimizer.{key}=1e-3",
                         positive=True)
        check_optimizer_options(OPTIMIZERS[name], name, {k: v for k, v in self.optimizer_cfg.items()
                                                         if k not in ("name", "g_lr", "d_lr")},
                                float(self.optimizer_cfg["g_lr"]), "model.optimizer.g_lr and d_lr")
        for group, sizes in (("generator", generator), ("discriminator", discriminator)):
            for key, value in sizes.items():
                if key.endswith("_size") or key == "num_layers":
                    check_int(f"model.{group}.{key}", value, f"e.g. model.{group}.{key}=16")
                if key in ("initial_scale", "initial_mult", "field_mult"):
                    check_number(f"model.{group}.{key}", value, f"e.g. model.{group}.{key}=1 (PyTorch's "
                                 "initialisation)", positive=True)
        self.save_hyperparameters({"solver": dataclasses.asdict(self.solver), "generator": dict(generator),
                                   "discriminator": dict(discriminator), "optimizer": self.optimizer_cfg,
                                   "train_steps": train_steps, "swa_start": swa_start, "lipschitz": lipschitz,
                                   "gp_lambda": gp_lambda, "update": update, "n_critic": n_critic})
        c, t = self.data_size, self.t_size
        self.generator = Generator(c, t_size=t, solver=self.solver, **generator)
        self.discriminator = Discriminator(c, t_size=t, solver=self.solver, **discriminator)
        self.averaged_generator = Averaged(self.generator, swa_start)
        self.averaged_discriminator = Averaged(self.discriminator, swa_start)
        self.automatic_optimization = False
        if self.solver.compile is not None:  # after Averaged: the averaged copies stay eager
            if self.lipschitz == "gradient_penalty":
                raise bad_option("solver.compile", self.solver.compile,
                                 "null with model.lipschitz=gradient_penalty (compiled graphs have no double backward)",
                                 "set solver.compile=null, or model.lipschitz=clip")
            self.generator.sde.compile_fields(self.solver.compile)
            self.discriminator.func.compile_fields(self.solver.compile)
        # The penalty needs a double backward, which torchsde's reversible-Heun adjoint cannot do.
        self.direct_solver = dataclasses.replace(self.solver, adjoint=False)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            self._check_graphable()
        self._graphed = None

    def _check_graphable(self) -> None:
        needs = (("solver.backend", self.solver.backend, "fast", "set solver.backend=fast (torchsde reads tensors "
                  "on the host every step)"),
                 ("solver.adjoint", self.solver.adjoint, True, "set solver.adjoint=true"),
                 ("solver.compile", self.solver.compile, None, "set solver.compile=null"),
                 ("model.lipschitz", self.lipschitz, "clip", "set model.lipschitz=clip (the penalty's double "
                  "backward leaves the fast path)"),
                 ("model.update", self.update, "simultaneous", "set model.update=simultaneous"),
                 ("model.discriminator.interpolation", self.discriminator.interpolation, "linear",
                  "set model.discriminator.interpolation=linear"))
        for key, value, wanted, fix in needs:
            if value != wanted:
                raise bad_option(key, value, f"{wanted!r} with model.cuda_graph=true", f"{fix}, or set "
                                 "model.cuda_graph=false")

    def on_fit_start(self) -> None:
        start = self.averaged_generator.start_step
        if start >= self.train_steps:  # at fit, not at load: eval.py of such a run need not hear it again
            # Averaging updates at steps 0 .. train_steps-1: shortening a run (model.train_steps=1000 under the laptop
            # recipe's swa_start=1000, a README example) silently evaluated the last generator instead.
            rank_zero_warn(f"model.swa_start={start} is not below model.train_steps={self.train_steps}: no weight "
                           "averaging in this run, so samples, plots and metrics come from the last generator, not "
                           "the average. Fix: set model.swa_start below model.train_steps, e.g. "
                           f"model.swa_start={self.train_steps // 2}, unless that is what you want.")
        if self.cuda_graph:
            if str(self.trainer.precision) not in ("32-true", "64-true"):
                raise bad_option("trainer.precision", self.trainer.precision, "32-true or 64-true with "
                                 "model.cuda_graph=true (the captured backward pass is not loss-scaled)",
                                 "set trainer.precision=32-true, or model.cuda_graph=false")
            if self.trainer.world_size > 1:
                raise bad_option("model.cuda_graph", True, "false with more than one process (the captured step "
                                 "has no gradient all-reduce)", "set model.cuda_graph=false, or train on one device")
            if self.device.type != "cuda":
                raise bad_option("model.cuda_graph", True, f"false on a {self.device.type} device (it captures "
                                 "CUDA kernels)", "train on a GPU (trainer=gpu), or set model.cuda_graph=false")

    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        cls = OPTIMIZERS[cfg.pop("name", "adadelta")]
        g_lr, d_lr = float(cfg.pop("g_lr")), float(cfg.pop("d_lr"))
        return cls(self.generator.parameters(), lr=g_lr, **cfg), cls(self.discriminator.parameters(), lr=d_lr, **cfg)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, averaged: bool = True) -> torch.Tensor:
        """``n`` paths ``(n, T, 1 + C)`` from the (averaged) generator, normalised units, without gradients
        (training calls ``self.generator`` itself)."""
        net = self.averaged_generator.current if averaged else self.generator
        self.check_n(n)
        return net(self.times, n, generator=generator)

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.lipschitz != "gradient_penalty":
            return real.new_zeros(())
        return self.gp_lambda * gradient_penalty(lambda x: self.discriminator(x, self.direct_solver), real, fake)

    def _clip(self) -> None:
        if self.lipschitz == "clip":
            clip_weights(self.discriminator)

    @staticmethod
    def _mean_scores(disc, first: torch.Tensor, second: torch.Tensor, solver: SolverConfig | None = None):
        """Mean scores of ``first`` and ``second`` (NaN-free paths: generated, or the datamodule's filled ones)
        from one CDE solve over both: per-step overhead, not arithmetic, dominates here."""
        scores = disc(torch.cat([first, second]), solver, filled=True)
        return scores[: first.size(0)].mean(), scores[first.size(0):].mean()

    def losses(self, real: torch.Tensor, draws: tuple | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """``(d_loss, fake_score, fake)`` of the simultaneous update, for the datamodule's NaN-filled ``real``
        paths; the generator's random inputs from ``draws`` (``Generator.draw``) or drawn from ``generator``."""
        fake = self.generator(self.times, real.size(0), generator=generator, draws=draws)
        fake_score, real_score = self._mean_scores(self.discriminator, fake, real)
        return fake_score - real_score, fake_score, fake

    def _negate_generator_grads(self) -> None:
        torch._foreach_neg_([p.grad for p in self.generator.parameters()])  # one kernel, not one per tensor

    def _graph_step(self, real: torch.Tensor, noise: torch.Tensor, dw: torch.Tensor) -> tuple:
        """What ``model.cuda_graph`` captures: the losses and their backward pass, from drawn noise."""
        d_loss, fake_score, _ = self.losses(real, (noise, dw))
        d_loss.backward()
        self._negate_generator_grads()
        return d_loss.detach(), fake_score.detach()

    def _graphed_losses(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graphed is None:
            from neuralsde.cuda_graphs import GraphedStep
            self._graphed = GraphedStep(self._graph_step, self.parameters_with_grads())
        # copies: the graph's outputs are overwritten by the next replay, and the logs may hold these
        return tuple(t.clone() for t in self._graphed(real, *self.generator.draw(self.times, real.size(0))))

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether a backward pass leaves parameters without gradients (DDP must then look for them every step):
        the alternating update's discriminator-only steps never reach the generator."""
        return self.update == "alternating"

    def parameters_with_grads(self) -> list[torch.nn.Parameter]:
        return [*self.generator.parameters(), *self.discriminator.parameters()]

    def _critic_fakes(self, n: int) -> torch.Tensor:
        """Generated paths for an alternating discriminator step, which never backpropagates into the generator:
        solved without its autograd graph (same numbers and noise draws, less memory and time)."""
        with torch.no_grad():
            return self.generator(self.times, n)

    def train_batch(self, batch):
        _, real = batch  # the NaN-filled paths: the discriminator reads their interpolation
        opt_g, opt_d = self.optimizers()
        if self.cuda_graph:
            d_loss, fake_score = self._graphed_losses(real)
            if not self.check_finite("train/d_loss", d_loss):  # nothing applied yet: the batch can still be skipped
                return
            opt_g.step()
            opt_d.step()
            self._clip()
            g_loss = -fake_score
        elif self.update == "simultaneous":
            d_loss, fake_score, fake = self.losses(real)
            if not self.check_finite("train/d_loss", d_loss):
                return
            self.manual_backward(d_loss + self._penalty(real, fake))
            self._negate_generator_grads()
            opt_g.step()
            opt_d.step()
            self._clip()
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            g_loss = -fake_score.detach()
        else:
            fake = self._critic_fakes(real.size(0))
            fake_score, real_score = self._mean_scores(self.discriminator, fake, real)
            d_loss = fake_score - real_score
            if not self.check_finite("train/d_loss", d_loss):
                return
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss + self._penalty(real, fake))
            opt_d.step()
            self._clip()
            g_loss = None
            if self.steps_taken % self.n_critic == 0:
                g_loss = -self.discriminator(self.generator(self.times, real.size(0)), filled=True).mean()
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                opt_g.step()
                opt_d.zero_grad(set_to_none=True)
        step = self.steps_taken
        self.averaged_generator.update(step)
        self.averaged_discriminator.update(step)
        if g_loss is not None:
            self._last_g_loss = g_loss.detach()
        losses = {"train/d_loss": d_loss.detach()}
        if self._last_g_loss is not None:  # alternating: the latest generator step's, or a written step may have none
            losses["train/g_loss"] = torch.as_tensor(self._last_g_loss, dtype=d_loss.dtype, device=d_loss.device)
        self.log_step(losses, prog_bar=True, sync_dist=True)
        self.log_step({"train/step": float(step + 1)})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # alternating: the loss the next steps log until the generator's next step (a resume logged none there)
        checkpoint["neuralsde"]["last_g_loss"] = None if self._last_g_loss is None else float(self._last_g_loss)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        value = checkpoint["neuralsde"].get("last_g_loss")
        self._last_g_loss = value  # a float: the module is not on its device yet; train_batch makes it a tensor

    def _w_dist(self, real: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Wasserstein estimate of the averaged discriminator on fixed noise: evaluation never draws from
        the global RNG, so it cannot change the training that follows (exact resume)."""
        gen = torch.Generator().manual_seed(10_000 + batch_idx)
        with torch.no_grad():
            disc = self.averaged_discriminator.current
            fake = self.sample(real.size(0), generator=gen)
            real_score, fake_score = self._mean_scores(disc, real, fake, self.direct_solver)
            return real_score - fake_score

    def validation_step(self, batch, batch_idx):
        _, real = batch
        self.log("val/w_dist", self._w_dist(real, batch_idx), prog_bar=True, batch_size=real.size(0),
                 sync_dist=True)

    def test_step(self, batch, batch_idx):
        _, real = batch
        self.log("test/w_dist", self._w_dist(real, batch_idx), batch_size=real.size(0), sync_dist=True)
