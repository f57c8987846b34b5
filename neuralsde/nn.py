"""Building blocks shared by both model families."""
from __future__ import annotations

import torch
from torch import nn


class LipSwish(nn.Module):
    """``0.909 * silu(x)``: silu's Lipschitz constant is about 1.1, so the scale makes it 1-Lipschitz."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.909 * torch.nn.functional.silu(x)


class MLP(nn.Sequential):
    """Multilayer perceptron ``in_size -> [mlp_size] * num_layers -> out_size``.

    ``num_layers`` counts hidden layers. LipSwish activations keep the network 1-Lipschitz under weight
    clipping; ``tanh=True`` ends in tanh, which bounds SDE/CDE vector fields as the paper does.
    Input ``(..., in_size)``, output ``(..., out_size)``.
    """

    def __init__(self, in_size: int, out_size: int, mlp_size: int, num_layers: int, tanh: bool = False,
                 activation: type[nn.Module] = LipSwish):
        layers: list[nn.Module] = [nn.Linear(in_size, mlp_size), activation()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(mlp_size, mlp_size), activation()]
        layers.append(nn.Linear(mlp_size, out_size))
        if tanh:
            layers.append(nn.Tanh())
        super().__init__(*layers)
