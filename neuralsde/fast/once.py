"""The adjoints' backward passes are first-order only: refuse a double backward instead of dropping it."""
from __future__ import annotations

import functools

import torch

DOUBLE_BACKWARD = ("a double backward (create_graph=True) reached the fast backend's adjoint, whose backward pass is "
                   "not differentiable: the gradient would be treated as a constant and any loss built on it (e.g. a "
                   "gradient penalty) would silently give no gradient through the solve. Fix: solve with "
                   "adjoint=False (solver.adjoint=false) where second derivatives are needed, as the SDE-GAN's "
                   "gradient penalty does.")


def first_order(backward):
    """torch's ``once_differentiable`` that raises where it would return gradients without a graph: in a
    backward pass run with ``create_graph=True`` (grad mode is on there exactly then)."""
    inner = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD)
        return inner(ctx, *grads)
    return checked
