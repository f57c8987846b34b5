"""The fast CDE solves read the driving path's slopes once per solve (forward and backward together), and midpoint's
adjoint gives, bit for bit, what it gave when it read them in three separate calls."""
from __future__ import annotations

import pytest
import torch

import neuralsde.fast as fast_pkg
from neuralsde.fast import fast_cdeint, midpoint_cdeint, slopes
from neuralsde.fast.cde import _field
from neuralsde.fast.midpoint import _FusedMidpointAdjoint
from neuralsde.fast.midpoint_generic import _GenericAdjoint, evaluation_times, mid_times, reverse_mid_times
from neuralsde.fast.probe import fused_field
from sdegan.components.discriminator import DiscriminatorCDE

B, H, T, C, MLP = 6, 8, 9, 3, 16


def cde_problem(dtype=torch.float64):
    torch.manual_seed(0)
    func = DiscriminatorCDE(C - 1, H, MLP, 1, time_scale=1 / (T - 1)).to(dtype)
    X_values = torch.randn(B, T, C, dtype=dtype).cumsum(1).requires_grad_()
    z0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    return func, z0, X_values


def solve_and_backward(solve, func, z0, X_values, **kw):
    out = solve(func, z0, X_values, None, 0.5, **kw)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    inputs = (z0, X_values, *func.parameters())
    return out, torch.autograd.grad((out * weights).sum(), inputs)


@pytest.fixture
def slope_calls(monkeypatch):
    """Counts ``path_slopes`` calls, wherever the fast backend's modules look the function up."""
    calls = []
    original = slopes.path_slopes

    def counted(*args, **kwargs):
        calls.append(args[1].numel())
        return original(*args, **kwargs)
    for module in [slopes, *(m for n, m in vars(fast_pkg).items() if isinstance(m, type(slopes)))]:
        if getattr(module, "path_slopes", None) is original:
            monkeypatch.setattr(module, "path_slopes", counted)
    return calls


@pytest.mark.parametrize("interpolation", ["linear", "hermite"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("solve", [midpoint_cdeint, fast_cdeint])
def test_an_adjoint_cde_solve_reads_the_slopes_once(slope_calls, solve, fused, interpolation):
    # midpoint used to call path_slopes three times (t_k, the reverse midpoints, t_{k+1}) for overlapping times
    func, z0, X_values = cde_problem()
    solve_and_backward(solve, func, z0, X_values, fused=fused, interpolation=interpolation)
    assert len(slope_calls) == 1


def old_midpoint_cdeint(func, z0, X_values, dt, fused, interpolation):
    """midpoint_cdeint's adjoint solve as it was, with a path_slopes call for each of its three time sets."""
    from neuralsde.fast.grids import knot_grid
    t_grid, obs = knot_grid(None, dt, X_values)
    U = slopes.path_slopes(X_values, t_grid[:-1], interpolation)
    U_mid = slopes.path_slopes(X_values, reverse_mid_times(t_grid), interpolation)
    U_next = slopes.path_slopes(X_values, t_grid[1:], interpolation)
    params = tuple(func.parameters())
    if fused:
        f = fused_field(func, params, evaluation_times(t_grid), mid_times(t_grid)[0], 1, z0)
        assert f is not None
        return _FusedMidpointAdjoint.apply(f[0], obs, f[1], None, (U * dt).detach(), U_mid * dt,
                                           (U_next * dt).detach(), z0, *f[0].params)
    return _GenericAdjoint.apply(_field(func), t_grid, obs, dt, None, U.detach(), U_mid, U_next.detach(), z0,
                                 *params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("interpolation", ["linear", "hermite"])
@pytest.mark.parametrize("fused", [True, False])
def test_midpoint_adjoint_is_bit_identical_to_three_slope_calls(fused, interpolation, dtype):
    func, z0, X_values = cde_problem(dtype)
    want = solve_and_backward(lambda f, z, x, ts, dt: old_midpoint_cdeint(f, z, x, dt, fused, interpolation),
                              func, z0, X_values)
    got = solve_and_backward(midpoint_cdeint, func, z0, X_values, fused=fused, interpolation=interpolation)
    assert type(got[0].grad_fn).__name__ == ("_FusedMidpointAdjointBackward" if fused else "_GenericAdjointBackward")
    assert torch.equal(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        assert torch.equal(g, w)
