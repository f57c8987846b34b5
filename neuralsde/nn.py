"""Building blocks shared by both model families."""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.errors import bad_option

TIME_INPUTS = ("unit", "index")


def field_time_scale(time_input: str, t_size: int, option: str) -> float:
    """Factor on the solver's index time ``0..T-1`` before a vector field reads it: ``unit`` rescales it to [0, 1];
    ``index`` keeps it, as the SDE-GAN paper's code (torchsde's examples/sde_gan.py) feeds its fields."""
    if time_input not in TIME_INPUTS:
        raise bad_option(option, time_input, f"one of {TIME_INPUTS}", f"set {option}=unit")
    return 1.0 / max(t_size - 1, 1) if time_input == "unit" else 1.0


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
