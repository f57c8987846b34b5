"""``dX/dt`` of the path that drives the fast CDE solvers, at the times they evaluate it.

``X`` interpolates ``X_values`` ``(B, L, C)`` on the knots ``0 .. L - 1``, as torchcde's ``LinearInterpolation``
(``linear``) or its ``CubicSpline`` of ``hermite_cubic_coefficients_with_backward_differences`` (``hermite``). Both
read ``dX/dt(t)`` from the piece *left* of ``t`` (``bucketize - 1``, clamped): at a knot the piece ending there,
piece 0 at ``t0``. The Hermite cubic's slope at a knot is the backward difference, the linear interpolation's, so
the two differ only where a solver evaluates between knots (midpoint's half steps, ``dt < 1``). The slopes are
differentiable in ``X_values``: the solvers' control gradients reach the path through them.
"""
from __future__ import annotations

import torch

INTERPOLATIONS = ("linear", "hermite")


def knot_derivatives(X_values: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Slopes of the pieces of the linear interpolation: X_values ``(B, L, C)``, knots ``(L,)`` -> ``(B, L - 1, C)``."""
    return (X_values[:, 1:, :] - X_values[:, :-1, :]) / (knots[1:] - knots[:-1]).unsqueeze(-1)


def path_slopes(X_values: torch.Tensor, times: torch.Tensor, interpolation: str = "linear") -> torch.Tensor:
    """``dX/dt`` ``(M, B, C)`` at each of ``times`` ``(M,)`` (module docstring)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}: the fast backend's CDE paths are one of {INTERPOLATIONS}")
    length = X_values.size(1)
    knots = torch.linspace(0, length - 1, length, dtype=X_values.dtype, device=X_values.device)
    times = times.to(X_values.dtype)
    piece = torch.bucketize(times, knots).sub(1).clamp(0, length - 2)
    d = knot_derivatives(X_values, knots).transpose(0, 1)  # (L - 1, B, C)
    if interpolation == "linear":
        return d[piece]
    # Piece i's cubic has slope b_i = d_{i-1} (d_{-1} = d_0) at its left knot and d_i at its right one; on unit
    # spacing torchcde's divisions by the spacing are by 1 (exact) and are left out. Same operation order.
    b = torch.cat([d[:1], d[:-1]])
    two_c = 2 * (3 * (d - b) - d + b)
    three_d = (d - b) - two_c
    frac = (times - knots[piece]).view(-1, 1, 1)
    return b[piece] + (two_c[piece] + three_d[piece] * frac) * frac
