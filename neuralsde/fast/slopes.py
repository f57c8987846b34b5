"""``dX/dt`` of the path that drives the fast CDE solvers, at the times they evaluate it.

``X`` interpolates ``X_values`` ``(B, L, C)`` on the knots ``0 .. L - 1`` as torchcde's ``LinearInterpolation``,
which reads ``dX/dt(t)`` from the piece *left* of ``t`` (``bucketize - 1``, clamped): at a knot the piece ending
there, piece 0 at ``t0``. The slopes are differentiable in ``X_values``: the solvers' control gradients reach the
path through them.
"""
from __future__ import annotations

import torch


def knot_derivatives(X_values: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Slopes of the pieces of the linear interpolation: X_values ``(B, L, C)``, knots ``(L,)`` -> ``(B, L - 1, C)``."""
    return (X_values[:, 1:, :] - X_values[:, :-1, :]) / (knots[1:] - knots[:-1]).unsqueeze(-1)


def path_slopes(X_values: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """``dX/dt`` ``(M, B, C)`` at each of ``times`` ``(M,)`` (module docstring)."""
    length = X_values.size(1)
    knots = torch.linspace(0, length - 1, length, dtype=X_values.dtype, device=X_values.device)
    piece = torch.bucketize(times.to(X_values.dtype), knots).sub(1).clamp(0, length - 2)
    return knot_derivatives(X_values, knots).transpose(0, 1)[piece]
