"""What every model family's LightningModule shares: data geometry, step counting, sampling, checkpoint identity."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import CheckpointError, TrainingDivergedError

CHECKPOINT_FORMAT = 1


class GenerativeModule(pl.LightningModule):
    """Base class of ``SDEGAN`` and ``LatentSDE``.

    Subclasses set ``family`` and implement ``sample(n, generator=None) -> (n, T, 1 + C)`` in normalised
    units. ``train_step`` counts training batches (Lightning's ``global_step`` counts optimiser steps);
    training stops after ``train_steps`` of them.
    """

    family = "base"

    def __init__(self, times: torch.Tensor, normalizer: Normalizer, train_steps: int):
        super().__init__()
        if int(train_steps) < 1:
            raise ValueError(f"model.train_steps={train_steps} must be a positive integer. Fix: e.g. 500.")
        self.train_steps = int(train_steps)
        self.register_buffer("times", times.float().clone())
        self.normalizer = normalizer
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self.run_config: dict | None = None  # set by neuralsde.training.build

    @property
    def t_size(self) -> int:
        return self.times.numel()

    @property
    def data_size(self) -> int:
        return self.normalizer.shift.numel()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample_data_units(self, n: int, generator: torch.Generator | None = None,
                          batch_size: int = 1024) -> torch.Tensor:
        """``n`` generated paths ``(n, T, 1 + C)`` with the normalisation undone."""
        chunks = [self.sample(min(batch_size, n - i), generator) for i in range(0, n, batch_size)]
        paths = torch.cat(chunks).cpu()
        return torch.cat([paths[..., :1], self.normalizer.cpu().inverse(paths[..., 1:])], dim=-1)

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value).all():
            raise TrainingDivergedError(
                f"{name} is {value.item() if value.numel() == 1 else 'non-finite'} at training step "
                f"{int(self.train_step)}. Likely causes: a learning rate too high, Lipschitz control off, or "
                "NaNs reaching the model from the data. The last good checkpoint is kept in the run's "
                "checkpoints/ folder; resume from it with ckpt_path=... after lowering the learning rate.")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.train_step += 1
        if int(self.train_step) >= self.train_steps:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The run's resolved config travels with the weights, so eval.py and sample.py can rebuild the model.
        checkpoint["neuralsde"] = {"family": self.family, "format": CHECKPOINT_FORMAT,
                                   "train_step": int(self.train_step), "config": self.run_config}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("neuralsde")
        if meta is None:
            raise CheckpointError("This checkpoint was not written by neuralsde-lab (no 'neuralsde' entry). "
                                  "Fix: pass a checkpoint from a neuralsde-lab run's checkpoints/ folder.")
        if meta["family"] != self.family:
            raise CheckpointError(f"The checkpoint holds a {meta['family']!r} model but the config builds a "
                                  f"{self.family!r} model. Fix: use the experiment the checkpoint came from.")


def log_every(step: int, total: int) -> bool:
    """Log about 100 times per run without flooding short ones."""
    return step % max(1, math.ceil(total / 100)) == 0
