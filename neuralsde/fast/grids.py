"""Step grids of the fast solvers and the checks of their inputs against them: observation times that land
exactly on the ``dt`` grid (else the reversible adjoint is no longer exact), noise and input shapes, and the first
evaluation's drift and diffusion shapes."""
from __future__ import annotations

import torch

_GRIDS: dict = {}  # (t0, steps, dt, dtype, device) -> grid; never pruned: a captured CUDA graph may read one


def time_grid(ts, dt: float, like: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """Step grid ``t0, t0 + dt, ..., ts[-1]`` ``(N + 1,)`` and the step index of each ``ts[i]``.

    ``ts``: a tensor ``(T,)`` (the grid takes its dtype and device), or a sequence of floats with ``like`` giving
    them (no tensor is read: nothing waits on a GPU, and a CUDA graph can capture the solve). Grid tensors are
    made once per grid; do not write to them.
    Raises ValueError unless every ``ts[i]`` lies exactly on the grid: otherwise torchsde interpolates
    between steps and the reversible adjoint is no longer exact.
    """
    if isinstance(ts, torch.Tensor):
        if ts.dim() != 1 or ts.numel() < 2:
            raise ValueError(f"ts must have shape (T,) with T >= 2, got {tuple(ts.shape)}")
        values, dtype, device = ts.detach().cpu().tolist(), ts.dtype, ts.device
    else:
        values = [float(t) for t in ts]
        if len(values) < 2:
            raise ValueError(f"ts must hold T >= 2 times, got {len(values)}")
        if like is None:
            raise ValueError("ts given as Python numbers needs like= (a tensor of the grid's dtype and device)")
        dtype, device = like.dtype, like.device
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    t0 = values[0]
    obs = []
    for t in values:
        k = round((t - t0) / dt)
        if t0 + k * dt != t:
            raise ValueError(f"dt={dt} does not divide ts[i] - ts[0] = {t - t0} exactly; use a power-of-two dt "
                             "that lands on every observation time")
        if obs and k <= obs[-1]:
            raise ValueError("ts must be strictly increasing")
        obs.append(k)
    key = (t0, obs[-1], float(dt), dtype, device)
    grid = _GRIDS.get(key)
    if grid is None:
        # t0 + k*dt is exact for such grids, so it equals torchsde's repeated addition. Made outside inference mode:
        # a grid first built by a validation or eval pass would be an inference tensor, which a later training
        # solve cannot save for backward.
        with torch.inference_mode(False):
            grid = _GRIDS[key] = torch.tensor([t0 + k * dt for k in range(obs[-1] + 1)], dtype=dtype, device=device)
    return grid, obs


def knot_grid(ts, dt: float, X_values: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``time_grid`` of a CDE's output times ``ts`` on the knots ``0 .. L - 1`` of ``X_values`` ``(B, L, C)``;
    ``ts=None`` is ``[0, L - 1]``, taken without reading a tensor."""
    if X_values.dim() != 3 or X_values.size(1) < 2:
        raise ValueError(f"X_values must have shape (batch, length >= 2, channels), got {tuple(X_values.shape)}")
    last = X_values.size(1) - 1
    if ts is None:
        ts = (0.0, float(last))
    lo, hi = (float(ts[0]), float(ts[-1])) if not isinstance(ts, torch.Tensor) else ts[[0, -1]].tolist()
    if lo < 0 or hi > last:
        raise ValueError(f"ts must lie within the knots [0, {last}], got [{lo}, {hi}]")
    return time_grid(ts, dt, like=X_values)


def checked_grid(ts, dt, y0, dW=None, U=None, diagonal: bool = False):
    """``time_grid(ts, dt, like=y0)`` after checking that ``dW`` / ``U`` fit it."""
    t_grid, obs = time_grid(ts, dt, like=y0)
    n = len(t_grid) - 1
    if dW is not None and (dW.dim() != 3 or dW.size(0) != n or dW.size(1) != y0.size(0)):
        raise ValueError(f"dW must have shape ({n}, {y0.size(0)}, noise) for {n} steps, got {tuple(dW.shape)}")
    if dW is not None and diagonal and dW.size(2) != y0.size(1):
        raise ValueError(f"diagonal noise needs one Brownian channel per state channel: dW must have shape "
                         f"({n}, {y0.size(0)}, {y0.size(1)}), got {tuple(dW.shape)}")
    if U is not None and U.size(0) != n + 1:
        raise ValueError(f"U must have {n + 1} rows (one per grid time), got {U.size(0)}")
    return t_grid, obs


def shape_checked(field, y0: torch.Tensor, dW: torch.Tensor | None, diagonal: bool):
    """``field(t, z, u)`` that checks its first evaluation's drift and diffusion shapes against the state and the
    noise: a wrong diffusion shape failed deep inside a step (reversible Heun) or was read as the other noise type
    (midpoint), where torchsde refuses it."""
    if dW is None or hasattr(field, "at"):
        return field
    pending = [True]

    def checked(t, z, u):
        f, g = field(t, z, u)
        if pending:
            pending.clear()
            kind = "diagonal" if diagonal else "general"
            want = tuple(y0.shape) if diagonal else (*y0.shape, dW.size(-1))
            if tuple(f.shape) != tuple(y0.shape):
                raise ValueError(f"the drift returned shape {tuple(f.shape)}: expected (batch, state) = "
                                 f"{tuple(y0.shape)}, the shape of y0")
            if g is not None and tuple(g.shape) != want:
                fix = ("return one diffusion per state channel, or declare noise_type='general' for a "
                       "(batch, state, noise) matrix" if diagonal else "return a (batch, state, noise) matrix; "
                       "a diagonal-noise SDE (noise_type='diagonal') is solved by neuralsde.solver.sdeint")
                raise ValueError(f"the diffusion returned shape {tuple(g.shape)}: {kind} noise expects "
                                 f"{'(batch, state)' if diagonal else '(batch, state, noise)'} = {want}. Fix: {fix}")
        return f, g
    return checked
