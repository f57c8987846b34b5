"""Training batches as a pure function of (seed, step, rank): exact resume and DDP sharding for free."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from neuralsde.errors import ConfigError


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StepBatches(IterableDataset):
    """Endless training batches; batch ``i`` depends only on ``(seed, i)``.

    Each pass over the data is a fresh seeded permutation (pass ``k`` uses seed ``seed + k``); incomplete
    tails are dropped. Under DDP each step draws ``batch_size * world_size`` series and rank ``r`` takes
    slice ``r``, so the effective batch is ``batch_size * world_size``. ``start`` skips to the step a
    resumed run stopped at, without drawing the batches before it.

    Yields ``tuple(tensor[idx] for tensor in tensors)``, each ``(batch_size, ...)``.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, start: int = 0):
        super().__init__()
        self.tensors, self.batch_size, self.seed, self.start = tensors, int(batch_size), int(seed), int(start)

    def indices(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        n = self.tensors[0].size(0)
        per_step = self.batch_size * world
        steps_per_pass = n // per_step
        if steps_per_pass == 0:
            raise ConfigError(f"data.batch_size={self.batch_size} x {world} processes exceeds the {n} training "
                             "series. Fix: lower data.batch_size or the number of devices.")
        k, j = divmod(step, steps_per_pass)
        if getattr(self, "_pass", None) != k:  # one permutation per pass, not per step
            self._pass, self._perm = k, torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + k))
        perm = self._perm
        chunk = perm[j * per_step:(j + 1) * per_step]
        return chunk[rank * self.batch_size:(rank + 1) * self.batch_size]

    def __iter__(self):
        rank, world = _rank_and_world()
        step = self.start
        while True:
            idx = self.indices(step, rank, world)
            yield tuple(t[idx] for t in self.tensors)
            step += 1
