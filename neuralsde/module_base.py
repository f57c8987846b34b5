"""What every model family's LightningModule shares: data geometry, step counting, sampling, resume state."""
from __future__ import annotations

import random
import time
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from neuralsde.checkpoints import run_checkpoint
from neuralsde.data.batches import _rank_and_world
from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import CheckpointError, DataError, TrainingDivergedError, check_bool, check_int

CHECKPOINT_FORMAT = 1


class GenerativeModule(pl.LightningModule):
    """Base class of ``SDEGAN`` and ``LatentSDE``.

    Subclasses set ``family`` and implement ``train_batch(batch)`` (one training step) and
    ``sample(n, generator=None) -> (n, T, 1 + C)`` in normalised units. ``train_step`` counts training
    batches (Lightning's ``global_step`` counts optimiser steps) and ``steps_taken`` reads it; training stops
    after ``train_steps``. With ``skip_nonfinite`` a batch whose loss ``check_finite`` refuses counts as a step
    but logs no losses; ``train/skipped_nonfinite`` counts such batches.
    Checkpoints carry the run config, every RNG state and the wandb run id, so a resumed run continues
    exactly as an uninterrupted one would on CPU.
    """

    family = "base"
    divergence_causes = "a learning rate too high, or NaNs reaching the model from the data"

    def __init__(self, times: torch.Tensor, normalizer: Normalizer, train_steps: int,
                 skip_nonfinite: bool = False):
        super().__init__()
        self.train_steps = check_int("model.train_steps", train_steps, "e.g. model.train_steps=500")
        self.skip_nonfinite = check_bool("model.skip_nonfinite", skip_nonfinite)
        self.skipped_nonfinite = 0  # batches skipped so far in this run (resumed from the checkpoint)
        self._skipping = False  # check_finite refused this step's loss
        self.register_buffer("times", times.float().clone())
        self.normalizer = normalizer
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))  # in the checkpoint's state dict
        self._steps_taken: int | None = 0  # its value on the host; None: read it again (after loading weights)
        self.register_load_state_dict_post_hook(_forget_steps_taken)
        self.run_config: dict | None = None  # set by neuralsde.training.build, resolved
        self.run_config_source: dict | None = None  # the same with interpolations kept (training.config_source)
        self.data_meta: dict | None = None  # set by build: the data's channel_names and source_times, for sample.py
        self._pending_rng: dict | None = None
        self._batch_start = 0.0

    @property
    def steps_taken(self) -> int:
        """``train_step`` as a Python int, kept on the host: reading the buffer on a GPU waits for the device,
        and the step loop asks for it several times per step."""
        if self._steps_taken is None:
            self._steps_taken = int(self.train_step)
        return self._steps_taken

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether a backward pass leaves some parameters without gradients (DDP must then look for them every step;
        ``neuralsde.distributed.ddp_options``). None of this family's models do unless they say so."""
        return False

    @property
    def t_size(self) -> int:
        return self.times.numel()

    @property
    def data_size(self) -> int:
        return self.normalizer.shift.numel()

    # --- what subclasses provide -------------------------------------------------------------------
    def train_batch(self, batch):
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    # --- training ----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        self._skipping = False
        rank, world = _rank_and_world()
        if world > 1:
            with rank_noise(rank):
                out = self.train_batch(batch)
        else:
            out = self.train_batch(batch)
        if self._skipping:
            self._count_skipped_step()
        if self.skipped_nonfinite:  # a count, not a flag: a skip between two written steps shows at the next
            self.log_step({"train/skipped_nonfinite": float(self.skipped_nonfinite)}, prog_bar=True)
        # Counted here, not in on_train_batch_end: checkpoint callbacks run before the module's hooks.
        self.train_step += 1
        self._steps_taken = self.steps_taken + 1
        return out

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # applied now: nothing between restore and here may draw
            _set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._batch_start
        if self.steps_taken >= self.train_steps:
            self.trainer.should_stop = True  # first: the last step's logs are written
        # Seconds per training step (tables take its median) and the dashboard's speed, in one logging call.
        self.log_step({"train/step_time": elapsed, "train/steps_per_s": 1.0 / max(elapsed, 1e-9)})

    def writes_logs(self) -> bool:
        """True on the training steps whose logs Lightning writes (every ``trainer.log_every_n_steps``, and the
        last): on the others a logged value would only be overwritten, so per-step diagnostics can skip their
        work there."""
        trainer = self._trainer
        connector = None if trainer is None else getattr(trainer, "_logger_connector", None)
        return (connector is None or trainer.fast_dev_run or connector.should_update_logs
                or self.steps_taken + 1 >= self.train_steps)

    def log_step(self, metrics: dict, **kwargs) -> None:
        """``log_dict`` of per-step training scalars on the steps that ``writes_logs``: Lightning's ``log`` costs
        enough per key to be 7% of a fast-backend SDE-GAN step (bench row 6). The progress bar shows the values
        of the last written step."""
        if self.writes_logs():
            self.log_dict(metrics, **kwargs)

    def _count_skipped_step(self) -> None:
        """Count a batch ``check_finite`` skipped and drop what earlier steps logged: Lightning writes a training
        step's last logged values at every written step until they are logged again, so the skipped step's row in
        metrics.csv and wandb repeated the step before's losses as its own. It logs ``train/step`` again (the count is
        logged by ``training_step``, at every written step once there is one)."""
        self.skipped_nonfinite += 1
        results = None if self._trainer is None else self._trainer._results
        if results is not None:
            results.reset(metrics=False, fx="training_step")
        self.log_step({"train/step": float(self.steps_taken + 1)})

    def check_finite(self, name: str, value: torch.Tensor) -> bool:
        """True if ``value`` is finite. Otherwise raise, or warn and return False with ``skip_nonfinite``.

        Under DDP every process takes the same decision (one all-reduce): a batch skipped or a run stopped on one
        process alone left the others waiting in the gradient all-reduce for good (a NaN on one rank hung ddp_sim)."""
        bad = non_finite_ranks(value)
        if not bad:
            return True
        _, world = _rank_and_world()
        shown = value.item() if value.numel() == 1 and not torch.isfinite(value).all() else "non-finite"
        where = "" if world == 1 else f" on process(es) {bad} of {world}"
        message = (f"{name} is {shown}{where} at training step {self.steps_taken}. Likely causes: "
                   f"{self.divergence_causes}.")
        if self.skip_nonfinite:
            rank_zero_warn(message + " Skipping this batch (model.skip_nonfinite=true).")
            self._skipping = True
            return False
        last = self._last_checkpoint()
        where = (f" The last checkpoint written before this step is kept. Fix: resume from it with ckpt_path={last} "
                 "after lowering the learning rate," if last else
                 " No checkpoint was written before this step. Fix: lower the learning rate and train again,")
        raise TrainingDivergedError(message + where + " or set model.skip_nonfinite=true to skip such batches.")

    def _last_checkpoint(self) -> str | None:
        """The newest checkpoint this run has written, if any."""
        return None if self._trainer is None else run_checkpoint(self._trainer)

    def check_input_paths(self, paths, name: str = "paths") -> torch.Tensor:
        """``paths`` as the model reads them, ``(batch, T, 1 + C)`` on its grid and in its dtype, or a DataError
        with the fix: a ``(T, batch, 1 + C)`` tensor or another number of times was read without complaint (the
        latent SDE's encoder took any length and the decoder answered on the training grid), float64 paths met a
        float32 network as torch's dtype error."""
        if not isinstance(paths, torch.Tensor):
            raise DataError(f"{name} must be a torch.Tensor (batch, T, 1 + C), got {type(paths).__name__}. "
                            "Fix: torch.as_tensor(...).")
        want = (self.t_size, 1 + self.data_size)
        if paths.ndim != 3 or tuple(paths.shape[1:]) != want:
            hint = ("it looks like (T, batch, 1 + C): Fix: pass paths.transpose(0, 1)."
                    if paths.ndim == 3 and tuple(paths.shape[::2]) == (self.t_size, 1 + self.data_size) else
                    f"Fix: pass paths on the model's {self.t_size} training times, time in channel 0 and "
                    f"{self.data_size} data channel(s) after it, as the datamodule's train/val/test hold them.")
            raise DataError(f"{name} has shape {tuple(paths.shape)}: expected (batch, {want[0]}, {want[1]}); {hint}")
        dtype = self.times.dtype
        if paths.dtype != dtype:
            raise DataError(f"{name} are {paths.dtype} but the model is {dtype}. Fix: pass {name}.to({dtype}), or "
                            f"convert the model with model.to({paths.dtype}).")
        return paths.to(self.times.device)

    # --- sampling ----------------------------------------------------------------------------------
    @staticmethod
    def check_n(n) -> int:
        """``n`` paths to sample as an int, or a ConfigError (``sample(0)`` was a reshape error deep in the
        solver, ``sample(2.5)`` a ``randn`` signature dump)."""
        return check_int("n", n, "e.g. model.sample(256)", also=" (number of paths)")

    @torch.no_grad()
    def sample_data_units(self, n: int, generator: torch.Generator | None = None,
                          batch_size: int = 1024) -> torch.Tensor:
        """``n`` generated paths ``(n, T, 1 + C)`` with the normalisation undone."""
        self.check_n(n)
        chunks = [self.sample(min(batch_size, n - i), generator) for i in range(0, n, batch_size)]
        paths = torch.cat(chunks).cpu()
        return torch.cat([paths[..., :1], self.normalizer.inverse(paths[..., 1:])], dim=-1)

    # --- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The run's resolved config travels with the weights, so eval.py and sample.py can rebuild the model.
        checkpoint["neuralsde"] = {"family": self.family, "format": CHECKPOINT_FORMAT,
                                   "train_step": self.steps_taken, "config": self.run_config,
                                   "config_source": self.run_config_source,
                                   "rng": _get_rng_states(), "wandb_id": self._wandb_id(), "data": self.data_meta,
                                   "batch": self._batch_geometry(), "skipped_nonfinite": self.skipped_nonfinite}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("neuralsde")
        if meta is None:
            raise CheckpointError("This checkpoint was not written by neuralsde-lab (no 'neuralsde' entry). "
                                  "Fix: pass a checkpoint from a neuralsde-lab run's checkpoints/ folder.")
        if meta["family"] != self.family:
            raise CheckpointError(f"The checkpoint holds a {meta['family']!r} model but the config builds a "
                                  f"{self.family!r} model. Fix: use the experiment the checkpoint came from.")
        self._pending_rng = meta.get("rng")
        self.skipped_nonfinite = int(meta.get("skipped_nonfinite", 0))
        if self._trainer is not None and "optimizer_states" in checkpoint:  # by a Trainer, not load_from_checkpoint
            from neuralsde.resume import follow_optimizer_config

            if self._trainer.state.fn == TrainerFn.FITTING:  # validate/test(ckpt_path=...) optimise nothing
                path = self._trainer.ckpt_path or "the checkpoint"
                # a changed learning rate takes effect
                for change in follow_optimizer_config(checkpoint, self.configure_optimizers(), str(path)):
                    rank_zero_info(f"Resuming with the config's optimiser settings: {change}")
                note = batch_change_note(meta.get("batch"), self._batch_geometry())
                if note is not None:
                    (rank_zero_warn if note[0] == "warn" else rank_zero_info)(note[1])
            # Data changed on purpose (NEURALSDE_ALLOW_RESUME_CHANGE=1) were normalised with their own statistics;
            # the checkpoint's are about to replace them in the normaliser the data share: the data follow the model.
            state, dm = checkpoint.get("state_dict", {}), getattr(self._trainer, "datamodule", None)
            if "normalizer.shift" in state and hasattr(dm, "adopt_normalization"):
                dm.adopt_normalization(state["normalizer.shift"], state["normalizer.scale"])

    def _batch_geometry(self) -> dict | None:
        """``{"processes", "batch_size"}`` of this fit: each process trains on ``batch_size`` paths a step."""
        trainer = self._trainer
        batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if trainer is None or batch_size is None:
            return None
        return {"processes": int(trainer.world_size), "batch_size": int(batch_size)}

    def _wandb_id(self) -> str | None:
        trainer = self._trainer
        for logger in (trainer.loggers if trainer is not None else []):
            if type(logger).__name__ == "WandbLogger":
                return logger.experiment.id
        return None


def batch_change_note(saved: dict | None, now: dict | None) -> tuple[str, str] | None:
    """What a resume under another number of processes changes: ``("warn", ...)`` when the effective batch
    (``processes x data.batch_size``, which the learning rate is tuned for) differs, ``("info", ...)`` when only the
    split between processes does (the run goes on with the same batch, not bit for bit as it would have), else
    None. A DDP checkpoint resumed on one device (or the reverse) silently trained on another batch."""
    if not saved or not now or saved == now:
        return None
    before, after = (g["processes"] * g["batch_size"] for g in (saved, now))
    ran = (f"The checkpoint was trained by {saved['processes']} process(es) x data.batch_size={saved['batch_size']} "
           f"({before} paths a step); this run has {now['processes']} x {now['batch_size']}")
    if before == after:
        return "info", (f"{ran}: the same paths a step, split otherwise, so the run continues with other noise and "
                        "batches than the uninterrupted one would have.")
    fix = (f"data.batch_size={before // now['processes']}" if before % now["processes"] == 0 else
           f"a data.batch_size that makes {now['processes']} x data.batch_size = {before}")
    return "warn", (f"{ran} ({after} paths a step): training continues with another effective batch than the "
                    f"learning rate was set for. Fix: {fix} keeps the checkpoint's batch, unless the change is wanted.")


def non_finite_ranks(value: torch.Tensor) -> list[int]:
    """The ranks where ``value`` holds a NaN or an infinity (``[0]`` or ``[]`` without DDP), the same list on every
    rank: one host read, and under DDP one all-reduce of a ``world``-long flag vector before it."""
    rank, world = _rank_and_world()
    if world == 1:
        return [] if torch.isfinite(value).all() else [0]
    flags = torch.zeros(world, dtype=torch.int32, device=value.device)
    flags[rank] = (~torch.isfinite(value)).any()
    dist.all_reduce(flags)
    return [r for r, flag in enumerate(flags.tolist()) if flag]


@contextmanager
def rank_noise(rank: int):
    """Inside the block torch's RNG gives this rank its own draws: the generator's noise, the latent SDE's z0 noise and
    Brownian seeds. Every rank seeds the same global RNG (``seed_everything``), so without this all ranks drew the
    same noise: under DDP the SDE-GAN generated one fake batch ``devices`` times over, and the effective batch of
    generated paths stayed ``data.batch_size``. One draw from the shared stream (advancing it alike on every rank,
    so the checkpoint's RNG state, rank 0's, still resumes every rank exactly) seeds a stream per rank; the shared
    state is restored after the block."""
    base = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((base + rank * 0x9E3779B97F4A7C15) % 2**63)
        yield


def _forget_steps_taken(module: GenerativeModule, incompatible_keys) -> None:
    module._steps_taken = None  # the buffer may have been replaced: read it on next use


def _get_rng_states() -> dict:
    # Plain tensors and numbers only, so that Lightning's weights-only checkpoint loading accepts them.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
