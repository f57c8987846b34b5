"""Neural CDE driven by an interpolated path, on the reversible Heun machinery.

Reproduces ``torchcde.cdeint(LinearInterpolation(X), func, z0, ..., backend='torchsde',
method='reversible_heun')`` (or torchcde's Hermite cubic with backward differences). There the CDE becomes an SDE
with drift ``func(t, z) @ dX/dt(t)`` and a zero diffusion, so it is reversible Heun applied to that drift.
``dX/dt(t)`` is the derivative of the piece *left* of ``t`` (``slopes``), i.e. the piece ending at a knot, and
piece 0 at t0.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.grids import knot_grid
from neuralsde.fast.reversible_heun import solve
from neuralsde.fast.slopes import path_slopes


def _field(func):
    def field(t, z, u):
        # u: dX/dt at t, (B, C). Same matmul as torchcde's _VectorField.
        return (func(t, z) @ u.unsqueeze(-1)).squeeze(-1), None
    return field


def fast_cdeint(func: nn.Module, z0: torch.Tensor, X_values: torch.Tensor, ts: torch.Tensor | None = None,
                dt: float = 1.0, adjoint: bool = True, adjoint_params=None, fused: bool = True,
                interpolation: str = "linear") -> torch.Tensor:
    """Solve ``dz = func(t, z) dX`` with X the ``interpolation`` of X_values on knots ``0, 1, ..., L - 1``: torchcde's
    ``LinearInterpolation`` (``linear``) or Hermite cubic with backward differences (``hermite``; ``slopes``).

    func: ``(t scalar tensor, z (B, H)) -> (B, H, C)``. z0 ``(B, H)``. X_values ``(B, L, C)`` without NaNs
    (fill them first, e.g. ``torchcde.linear_interpolation_coeffs``). ts ``(T,)`` within ``[0, L - 1]`` on the
    ``dt`` grid (default ``[0, L - 1]``). Returns zs ``(T, B, H)`` (time first, unlike torchcde).
    Gradients reach func's parameters (or ``adjoint_params``), z0 and X_values, in both modes.
    fused: in adjoint mode, solve sdegan's ``DiscriminatorCDE`` or the latent SDE's CDE encoder field with
    hand-written VJPs (``neuralsde.fast.mlp.cde_mlp``; see ``fast_sdeint``).
    """
    ts = (0.0, X_values.size(1) - 1.0) if ts is None else ts  # Python numbers: no tensor is read
    t_grid, obs = knot_grid(ts, dt, X_values)
    U = path_slopes(X_values, t_grid, interpolation)  # (N + 1, B, C)
    params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint and fused:
        from neuralsde.fast.fused import fused_cdeint
        zs = fused_cdeint(func, z0, t_grid, obs, float(dt), U, params)
        if zs is not None:
            return zs
    return solve(_field(func), z0, ts, dt, U=U, params=params, adjoint=adjoint)
