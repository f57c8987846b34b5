"""The fast backend's CDE solves on torchcde's Hermite cubic with backward differences equal torchcde's (values and
gradients), and the SDE-GAN discriminator takes them on the fast backend instead of falling back to torchsde."""
from __future__ import annotations

import copy

import pytest
import torch
import torchcde

from neuralsde.fast import fast_cdeint, midpoint_cdeint
from neuralsde.fast.slopes import path_slopes
from neuralsde.solver import SolverConfig
from sdegan.components.discriminator import Discriminator, DiscriminatorCDE

B, H, T, C, MLP = 6, 8, 12, 3, 16


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def grads(out, inputs, seed=0):
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)


def hermite_path(X_values):
    ts = torch.arange(X_values.size(1), dtype=X_values.dtype)
    coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(X_values, t=ts)
    return coeffs, torchcde.CubicSpline(coeffs, t=ts)


def test_slopes_equal_torchcde_cubic_spline_derivative():
    X_values = torch.randn(B, T, C, dtype=torch.float64).cumsum(1)
    times = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.75, 4.0, 4.5, T - 1.5, T - 1.0], dtype=torch.float64)
    _, X = hermite_path(X_values)
    want = torch.stack([X.derivative(t) for t in times])
    got = path_slopes(X_values, times, "hermite")
    assert rel_err(got, want) < 1e-14
    on_knots = times == times.round()  # at knots the cubic's slope is the backward difference (up to rounding)
    assert rel_err(got[on_knots], path_slopes(X_values, times[on_knots])) < 1e-14
    assert not torch.allclose(got[~on_knots], path_slopes(X_values, times[~on_knots]))  # between them it is not


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
@pytest.mark.parametrize("fused", [True, False])
def test_hermite_cde_matches_torchcde(method, fused):
    # dt = 0.5: reversible Heun reads the slope mid-piece, midpoint at quarter points too.
    torch.manual_seed(0)
    func = DiscriminatorCDE(C - 1, H, MLP, 1, time_scale=1 / (T - 1)).double()
    X_values = torch.randn(B, T, C, dtype=torch.float64).cumsum(1).requires_grad_()
    z0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    inputs = (z0, X_values, *func.parameters())
    solve = midpoint_cdeint if method == "midpoint" else fast_cdeint
    for adjoint in (True, False):
        coeffs, X = hermite_path(X_values)
        kw = {}
        if adjoint:
            kw = {"adjoint_method": "midpoint" if method == "midpoint" else "adjoint_reversible_heun",
                  "adjoint_params": (coeffs, *func.parameters())}
        ref = torchcde.cdeint(X, func, z0, X.interval, method=method, backend="torchsde", dt=0.5, adjoint=adjoint,
                              **kw).transpose(0, 1)
        out = solve(func, z0, X_values, None, 0.5, adjoint=adjoint, fused=fused, interpolation="hermite")
        if adjoint and fused:
            assert "Fused" in type(out.grad_fn).__name__
        assert rel_err(out, ref) < 1e-12
        for got, want in zip(grads(out, inputs), grads(ref, inputs), strict=True):
            assert rel_err(got, want) < 1e-12


def test_an_unknown_interpolation_is_refused():
    X_values = torch.randn(2, 4, C, dtype=torch.float64)
    with pytest.raises(ValueError, match="interpolation='cubic'.*linear.*hermite"):
        path_slopes(X_values, torch.zeros(1, dtype=torch.float64), "cubic")


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_discriminator_solves_hermite_on_the_fast_backend(method, monkeypatch):
    # It used to hand interpolation=hermite to torchcde/torchsde whatever solver.backend said, without a word.
    torch.manual_seed(1)
    disc = Discriminator(C - 1, H, MLP, t_size=T, interpolation="hermite",
                         solver=SolverConfig(method=method, dt=0.5)).double()
    paths = torch.randn(B, T, C, dtype=torch.float64).cumsum(1).requires_grad_()
    out, cdeint, calls = {}, torchcde.cdeint, []
    for backend in ("torchsde", "fast"):
        d = copy.deepcopy(disc)
        if backend == "fast":
            def refuse(*args, **kwargs):
                raise AssertionError("the fast backend fell back to torchcde.cdeint")
            monkeypatch.setattr(torchcde, "cdeint", refuse)
        else:  # the reference is torchcde's solve, not the fast one twice
            monkeypatch.setattr(torchcde, "cdeint", lambda *a, **k: calls.append(1) or cdeint(*a, **k))
        scores = d(paths, SolverConfig(method=method, dt=0.5, backend=backend))
        out[backend] = (scores, *grads(scores, (paths, *d.parameters())))
    assert calls
    for fast, ref in zip(out["fast"], out["torchsde"], strict=True):
        assert (fast - ref).abs().max() <= 1e-12 * ref.abs().max().clamp_min(1e-300)
