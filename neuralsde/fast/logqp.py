"""The latent SDE's KL path term (torchsde's ``logqp=True``) on the fast reversible Heun solver.

torchsde appends one state channel ``l`` to a diagonal-noise SDE with posterior drift ``f``, prior drift ``h``
and diffusion ``g`` (``SDELogqp``):

    d[y, l] = [f(t, y), |u|^2 / 2] dt + [g(t, y), 0] o dW,    u = (f - h) / g,

with ``l(t0) = 0`` and one extra Brownian channel that meets a zero diffusion, and returns ``y`` and the
increments of ``l`` between observation times. The same augmented field solved by ``neuralsde.fast.solve``
(diagonal noise, exact reversible adjoint) or ``neuralsde.fast.midpoint.midpoint_solve`` gives the same numbers
without torchsde's per-step bookkeeping.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.fast.grids import time_grid
from neuralsde.fast.reversible_heun import method_solve

STABLE_EPS = 1e-7  # torchsde's stable_division: |g| is held at least this far from zero, keeping its sign


def _stable_division(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    b = torch.where(b.abs().detach() > STABLE_EPS, b, torch.full_like(b, STABLE_EPS) * b.sign())
    return a / b


def logqp_field(sde: nn.Module):
    """``field(t, Y, u) -> (F, G)`` of the augmented state ``Y = [y, l]`` ``(B, d + 1)``, as torchsde's
    ``SDELogqp.f_and_g_diagonal`` computes it: ``sde.f``, ``sde.g``, ``sde.h`` called in that order."""
    def field(t, Y, u):
        y = Y[:, :-1]
        f, g, h = sde.f(t, y), sde.g(t, y), sde.h(t, y)
        v = _stable_division(f - h, g)
        f_logqp = 0.5 * (v ** 2).sum(dim=1, keepdim=True)
        return torch.cat([f, f_logqp], dim=1), torch.cat([g, y.new_zeros(y.size(0), 1)], dim=1)
    return field


def check_sde(sde: nn.Module) -> None:
    """ValueError unless ``sde`` is what the fast KL path handles: Stratonovich, diagonal noise, with ``h``."""
    kind = (getattr(sde, "sde_type", None), getattr(sde, "noise_type", None))
    if kind != ("stratonovich", "diagonal"):
        raise ValueError(f"the fast backend's logqp needs a Stratonovich SDE with diagonal noise, got "
                         f"sde_type={kind[0]!r}, noise_type={kind[1]!r}; use solver.backend=torchsde")
    missing = [name for name in ("f", "g", "h") if not callable(getattr(sde, name, None))]
    if missing:
        raise ValueError(f"logqp needs the posterior drift f, the diffusion g and the prior drift h; the SDE has "
                         f"no {', '.join(missing)}")


def fast_sdeint_logqp(sde: nn.Module, y0: torch.Tensor, ts: torch.Tensor, dt: float, dW: torch.Tensor,
                      adjoint: bool = True, adjoint_params=None, fused: bool = True,
                      method: str = "reversible_heun") -> tuple[torch.Tensor, torch.Tensor]:
    """Solve of ``sde`` with its KL path term by ``method`` (``reversible_heun`` or ``midpoint``); equals
    torchsde's ``sdeint[_adjoint](sde, y0, ts, method=method, logqp=True)`` on the same increments.

    y0 ``(B, d)``; ts ``(T,)`` on the ``dt`` grid; dW ``(N, B, d + 1)`` (the last channel is the log-ratio's,
    multiplied by zero, as in torchsde). adjoint_params: the tensors to differentiate in adjoint mode (default
    ``sde.parameters()``; add any tensor the drift reads, such as a context). fused: in adjoint mode, evaluate a
    ``LatentSDEFunc`` with hand-written VJPs (``neuralsde.fast.latent``); other SDEs, or ``fused=False``, go through
    autograd per step. Midpoint's adjoint is torchsde's continuous one. Returns ys ``(T, B, d)`` and the log-ratio
    increments ``(T - 1, B)`` (torchsde layout).
    """
    check_sde(sde)
    if dW.dim() != 3 or dW.size(-1) != y0.size(1) + 1:
        raise ValueError(f"dW must have d + 1 = {y0.size(1) + 1} channels (the state's and the log-ratio's), got "
                         f"shape {tuple(dW.shape)}")
    solve = method_solve(method)
    params = tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params)
    Y0 = torch.cat([y0, y0.new_zeros(y0.size(0), 1)], dim=1)
    field = None
    if adjoint and fused:  # the fused field keeps no graph: the direct (adjoint=False) solve needs autograd's
        from neuralsde.fast.latent import fused_latent
        from neuralsde.fast.midpoint import evaluation_times
        t_grid = time_grid(ts, dt)[0]
        field = fused_latent(sde, params, evaluation_times(t_grid) if method == "midpoint" else t_grid, Y0)
    Ys = solve(field or logqp_field(sde), Y0, ts, dt, dW=dW, params=params, adjoint=adjoint, diagonal=True)
    ys, log_ratio = Ys[..., :-1], Ys[..., -1]
    return ys, log_ratio[1:] - log_ratio[:-1]

