"""SDE-GAN discriminator: a neural CDE driven by the interpolated (real or generated) path."""
from __future__ import annotations

import torch
import torchcde
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from neuralsde.brownian import ZeroBrownian
from neuralsde.compiling import set_compiled
from neuralsde.errors import DataError, bad_option
from neuralsde.nn import MLP, field_time_scale
from neuralsde.solver import SolverConfig


class DiscriminatorCDE(nn.Module):
    """CDE vector field ``(t, z) -> (batch, hidden, 1 + data_size)``, tanh-bounded."""

    def __init__(self, data_size: int, hidden_size: int, mlp_size: int, num_layers: int, time_scale: float = 1.0):
        super().__init__()
        self.hidden_size, self.channels, self.time_scale = hidden_size, 1 + data_size, time_scale
        self.net = MLP(1 + hidden_size, hidden_size * (1 + data_size), mlp_size, num_layers, tanh=True)
        self.compiled_nets = None  # (net,) from torch.compile, see set_compiled

    def compile_fields(self, mode: str | None) -> None:
        """Evaluate the field through ``torch.compile(mode=mode)`` (None: eager)."""
        set_compiled(self, (self.net,), mode)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = (t * self.time_scale).to(z.dtype).expand(z.size(0), 1)
        net = self.compiled_nets[0] if self.compiled_nets else self.net
        return net(torch.cat([t, z], dim=1)).view(z.size(0), self.hidden_size, self.channels)


INTERPOLATIONS = ("linear", "hermite")


class Discriminator(nn.Module):
    """Scores paths ``(batch, T, 1 + data_size)`` -> ``(batch,)``. NaNs (missing values) are filled by the
    linear interpolation (torchcde's ``linear_interpolation_coeffs``) before the CDE is solved.

    ``interpolation="hermite"`` drives the CDE by torchcde's Hermite cubic spline with backward differences
    (the fast backend evaluates its slopes itself: ``neuralsde.fast.slopes``). Its derivative at an observation
    time is the linear interpolation's there (the backward difference), so it changes the solve only where a
    solver evaluates between observations: ``midpoint``, or ``dt < 1``.
    """

    def __init__(self, data_size: int, hidden_size: int = 16, mlp_size: int = 16, num_layers: int = 1,
                 t_size: int = 64, solver: SolverConfig | None = None, interpolation: str = "linear",
                 time_input: str = "unit"):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise bad_option("model.discriminator.interpolation", interpolation, f"one of {INTERPOLATIONS}",
                             "set model.discriminator.interpolation=linear")
        self.interpolation = interpolation
        self.solver = solver or SolverConfig()
        if interpolation == "hermite" and self.solver.method != "midpoint" and self.solver.dt >= 1:
            rank_zero_warn(f"model.discriminator.interpolation=hermite gives the linear interpolation's numbers with "
                           f"solver.method={self.solver.method} and solver.dt={self.solver.dt}: the solver reads the "
                           "path's derivative only at observation times, where the two interpolations agree. Fix: "
                           "solver.dt=0.5 (or smaller), or solver=midpoint, for the cubic to make a difference.")
        self.initial = MLP(1 + data_size, hidden_size, mlp_size, num_layers, tanh=False)
        self.func = DiscriminatorCDE(data_size, hidden_size, mlp_size, num_layers,
                                     time_scale=field_time_scale(time_input, t_size,
                                                                 "model.discriminator.time_input"))
        self.t_size = t_size
        self.readout = nn.Linear(hidden_size, 1)

    def forward(self, paths: torch.Tensor, solver: SolverConfig | None = None, filled: bool = False) -> torch.Tensor:
        """``filled``: the caller knows ``paths`` hold no NaN (generated paths, the datamodule's filled ones), so
        none is looked for: the look reads a tensor on the host, which waits for a GPU and which a CUDA graph
        cannot capture."""
        self._check(paths)
        solver = solver or self.solver
        coeffs = paths if filled or not torch.isnan(paths).any() else torchcde.linear_interpolation_coeffs(paths)
        z0 = self.initial(coeffs[:, 0])
        if solver.backend == "fast":
            from neuralsde.fast import fast_cdeint, midpoint_cdeint
            solve = midpoint_cdeint if solver.method == "midpoint" else fast_cdeint
            zs = solve(self.func, z0, coeffs, None, solver.dt, adjoint=solver.adjoint,  # ts [0, T - 1]: reads z(T)
                       interpolation=self.interpolation)
            z_last = zs[-1]
        else:
            ts = torch.arange(paths.size(1), device=paths.device, dtype=paths.dtype)
            if self.interpolation == "hermite":
                coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(coeffs, t=ts)
                path = torchcde.CubicSpline(coeffs, t=ts)
            else:
                path = torchcde.LinearInterpolation(coeffs, t=ts)
            kwargs = dict(method=solver.method, backend="torchsde", dt=solver.dt,
                          bm=ZeroBrownian((paths.size(0), 1), paths.dtype, paths.device))
            if solver.adjoint:
                kwargs.update(adjoint_method=solver.adjoint_method,
                              adjoint_params=(coeffs,) + tuple(self.func.parameters()))
            zs = torchcde.cdeint(path, self.func, z0, ts[[0, -1]], adjoint=solver.adjoint, **kwargs)
            z_last = zs[:, -1]
        return self.readout(z_last).squeeze(-1)

    def _check(self, paths: torch.Tensor) -> None:
        """Shapes and dtype only (no values: nothing waits for a GPU): a ``(T, batch, C)`` tensor was scored as T
        paths, another number of times was read on the wrong time scale, float64 met torch's dtype error."""
        want = (self.t_size, self.func.channels)
        if paths.dim() != 3 or tuple(paths.shape[1:]) != want:
            hint = ("it looks like (T, batch, 1 + C): pass paths.transpose(0, 1)" if paths.dim() == 3
                    and tuple(paths.shape[::2]) == want else "pass paths on the discriminator's grid, time first")
            raise DataError(f"paths have shape {tuple(paths.shape)}: expected (batch, {want[0]}, {want[1]}). Fix: "
                            f"{hint}.")
        if paths.dtype != self.readout.weight.dtype:
            raise DataError(f"paths are {paths.dtype} but the discriminator is {self.readout.weight.dtype}. Fix: "
                            f"pass paths.to({self.readout.weight.dtype}), or convert the model.")
