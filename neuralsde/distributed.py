"""Multi-process checks: every rank must hold the same parameters and averaged parameters."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.distributed as dist


def state_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """``(n_tensors,)`` float64 sums of every parameter and buffer (averaged networks and step counter included)."""
    return torch.stack([t.detach().double().sum() for t in module.state_dict().values()]).cpu()


class RankConsistencyCheck(pl.Callback):
    """After every training step, gathers each rank's fingerprint and raises if any rank differs.

    Debug aid for data-parallel training (``trainer=ddp``, ``trainer=ddp_sim``): a mismatch means a step
    depended on rank-local state (unsynchronised gradients, per-rank clipping or averaging, RNG drift).
    """

    def __init__(self, out_file: str | None = None):
        self.out_file = out_file
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        mine = state_fingerprint(pl_module)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        for rank, other in enumerate(gathered):
            if not torch.equal(other, mine):
                raise RuntimeError(f"Rank {dist.get_rank()} and rank {rank} hold different parameters after training "
                                   f"step {pl_module.steps_taken}.")
        self.checked += 1
        if self.out_file and trainer.is_global_zero:
            with open(self.out_file, "a") as f:
                f.write(f"{pl_module.steps_taken} {dist.get_world_size()} {float(mine.sum())!r}\n")
