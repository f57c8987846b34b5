"""Stochastic weight averaging of a network from a given training step."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class Averaged(nn.Module):
    """Holds a running average of ``net`` (an ``AveragedModel`` submodule, so checkpoints keep it).

    ``current`` is the network that sampling should use: the average once it has started, else ``net``.
    """

    def __init__(self, net: nn.Module, start_step: int):
        super().__init__()
        self.start_step = int(start_step)
        self.average = AveragedModel(net, use_buffers=False)
        self.average.requires_grad_(False)
        self._net = [net]  # a list, so that ``net`` is not registered twice in the state dict

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step >= self.start_step:
            self.average.update_parameters(self._net[0])

    @property
    def started(self) -> bool:
        return int(self.average.n_averaged) > 0

    @property
    def current(self) -> nn.Module:
        return self.average.module if self.started else self._net[0]
