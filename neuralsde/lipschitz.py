"""Lipschitz control of the discriminator: weight clipping (the paper's) and gradient penalty (baseline)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from neuralsde.errors import bad_option

LIPSCHITZ_METHODS = ("clip", "gradient_penalty")


@torch.no_grad()
def clip_weights(module: nn.Module) -> None:
    """Clip every ``nn.Linear`` weight in ``module`` to ``[-1/out_features, 1/out_features]``.

    With LipSwish activations this keeps each layer, and so the vector field, Lipschitz (Kidger et al. 2021).
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1.0 / layer.out_features
            layer.weight.clamp_(-bound, bound)


def gradient_penalty(score_fn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``E[(|grad D(x_hat)| - 1)^2]`` on random interpolates of ``real`` and ``fake``.

    real, fake: ``(batch, time, channels)``; NaNs in ``real`` are replaced by the fake values there so the
    interpolate stays finite. ``score_fn`` must be differentiable twice: torchsde's reversible-Heun adjoint
    fails on the double backward (a RuntimeError inside torchsde), so callers evaluate the discriminator
    with direct backpropagation through the solver (``solver.adjoint=False``) for this term.
    """
    real = torch.where(torch.isnan(real), fake.detach(), real)
    alpha = torch.rand(real.size(0), 1, 1, generator=generator, dtype=real.dtype).to(real.device)
    x_hat = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = score_fn(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def check_method(name: str) -> str:
    if name not in LIPSCHITZ_METHODS:
        raise bad_option("model.lipschitz", name, f"one of {LIPSCHITZ_METHODS}",
                         "set model.lipschitz=clip (the paper's) or model.lipschitz=gradient_penalty")
    return name
