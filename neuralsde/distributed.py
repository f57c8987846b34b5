"""Data-parallel training: the DDP strategy a model needs, work done once for every rank, and a check that every rank
holds the same parameters and averaged parameters."""
from __future__ import annotations

from typing import Callable, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

from neuralsde.data.batches import _rank_and_world
from neuralsde.errors import ConfigError

T = TypeVar("T")


def ddp_options(trainer_cfg: DictConfig, model) -> dict:
    """The ``strategy`` to merge into ``trainer_cfg`` (``{}``: none) so that DDP looks for unused parameters exactly
    when ``model`` leaves some without gradients in a backward pass (``model.leaves_parameters_unused``: the
    alternating SDE-GAN update's discriminator-only steps). Looking costs a traversal of the autograd graph every
    step and, where nothing is unused, a notice from torch on every rank; not looking, where something is, fails
    the next step.

    ``trainer=ddp``/``ddp_sim`` (a ``DDPStrategy`` node) get ``find_unused_parameters`` unless it is set there; a
    DDP that Lightning picks itself (``trainer.devices=2`` with ``strategy: auto``, or ``strategy=ddp``) becomes
    Lightning's ``*_find_unused_parameters_true`` variant where the model needs it."""
    unused = model.leaves_parameters_unused
    strategy = trainer_cfg.strategy if "strategy" in trainer_cfg else "auto"
    if isinstance(strategy, DictConfig):
        if not issubclass(get_class(strategy._target_), DDPStrategy):
            return {}
        if "find_unused_parameters" not in strategy:
            return {"strategy": {"find_unused_parameters": unused}}
        if unused and not strategy.find_unused_parameters:
            raise ConfigError("trainer.strategy.find_unused_parameters=false, but model.update=alternating leaves the "
                              "generator without gradients in its discriminator-only steps, which DDP then waits "
                              "for. Fix: drop the override (the strategy sets it for this model).")
        return {}
    if not unused or not isinstance(strategy, str):
        return {}
    name = "ddp" if strategy == "auto" and _processes(trainer_cfg) > 1 else strategy
    name = f"{name}_find_unused_parameters_true"
    return {"strategy": name} if name in StrategyRegistry else {}


def _processes(trainer_cfg: DictConfig) -> int:
    """The number of processes Lightning starts for ``trainer_cfg``'s devices and nodes: above one, its ``auto``
    strategy is DDP. Lightning's public ``CUDAAccelerator.parse_devices`` (2.6) raises where no GPU is visible (a
    GPU node's config composed on a login node or a laptop) and takes no ``"auto"``."""
    devices = trainer_cfg.devices if "devices" in trainer_cfg else "auto"
    if isinstance(devices, str) and "," in devices:  # "0,1": device ids
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif str(devices) in ("-1", "auto"):
        accelerator = str(trainer_cfg.accelerator if "accelerator" in trainer_cfg else "auto")
        cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        count = torch.cuda.device_count() if cuda else 1
    else:
        count = int(devices)
    return count * int(trainer_cfg.num_nodes if "num_nodes" in trainer_cfg else 1)


def computed_on_rank_zero(compute: Callable[[], T]) -> T:
    """``compute()`` run by rank 0 alone, its (picklable) result sent to every rank: for work whose result would be
    the same on every rank (the test metrics train a classifier and a forecaster on each), done once instead of once
    per process. Without DDP a plain call.

    Every rank must reach this call (it ends in a broadcast). An exception in ``compute`` is raised on rank 0 and, as
    a RuntimeError naming it, on the other ranks, which would otherwise wait in the broadcast until the process
    group's timeout (30 minutes by default)."""
    rank, world = _rank_and_world()
    if world == 1:
        return compute()
    outcome: list = [None]
    error = None
    if rank == 0:
        try:
            outcome[0] = (True, compute())
        except BaseException as err:  # a second Ctrl-C's KeyboardInterrupt too: the other ranks wait for word
            error = err
            outcome[0] = (False, f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    done, result = outcome[0]
    if not done:
        raise RuntimeError(f"Rank 0 failed in work it does for every rank: {result}")
    return result


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
