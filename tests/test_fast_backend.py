"""The fast backend (reversible Heun, midpoint) equals torchsde / torchcde (values and gradients) on the same noise."""
from __future__ import annotations

import types

import pytest
import torch
import torchcde
import torchsde
from torch import nn

from neuralsde.fast import GridBrownian, fast_cdeint, fast_sdeint, increments_from, sample_increments
from neuralsde.fast import fused as fused_module
from neuralsde.fast import mlp as mlp_module
from neuralsde.fast.midpoint import midpoint_cdeint, midpoint_sdeint
from neuralsde.fast.mlp import cde_mlp, generator_mlp
from sdegan.components.discriminator import DiscriminatorCDE
from sdegan.components.generator import GeneratorSDE
from tests.library_solves import record_library_solves

B, H, W, T, C, MLP = 8, 8, 3, 16, 3, 16
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


class LipSwish(nn.Module):
    def forward(self, x):
        return 0.909 * torch.nn.functional.silu(x)


def mlp(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, MLP), LipSwish(), nn.Linear(MLP, n_out), nn.Tanh())


def with_time(t, y):
    return torch.cat([t.to(y.dtype).expand(y.size(0), 1), y], dim=1)


class Field(nn.Module):
    """Stratonovich general-noise field. Submodules avoid the names f/g/h (torchsde looks those up)."""

    sde_type, noise_type = "stratonovich", "general"

    def __init__(self):
        super().__init__()
        self.drift_net, self.diffusion_net = mlp(1 + H, H), mlp(1 + H, H * W)

    def f_and_g(self, t, y):
        ty = with_time(t / T, y)
        return self.drift_net(ty), self.diffusion_net(ty).view(y.size(0), H, W)


class CDEFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(1 + H, H * C)

    def forward(self, t, z):
        return self.net(with_time(t / T, z)).view(z.size(0), H, C)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def grads(out, inputs, seed=0):
    # A random linear functional of every output, so each ys[i] gets its own incoming gradient.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)


def sde_setup(dtype, dt, seed=0):
    torch.manual_seed(seed)
    field = Field().to(dtype)
    y0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    ts = torch.arange(T, dtype=dtype)
    dW = sample_increments(round((T - 1) / dt), B, W, dt, torch.Generator().manual_seed(seed + 1), dtype)
    return field, y0, ts, dW


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dt", [1.0, 0.5])
def test_sde_matches_torchsde_adjoint(dtype, dt):
    field, y0, ts, dW = sde_setup(dtype, dt)
    inputs = (y0, *field.parameters())
    bm = GridBrownian(dW, 0.0, dt)
    ref = torchsde.sdeint_adjoint(field, y0, ts, bm=bm, method="reversible_heun",
                                  adjoint_method="adjoint_reversible_heun", dt=dt)
    ref_grads = grads(ref, inputs)
    for adjoint in (True, False):
        out = fast_sdeint(field, y0, ts, dt, dW, adjoint=adjoint)
        assert out.shape == (T, B, H)
        assert rel_err(out, ref) < TOL[dtype]
        for got, want in zip(grads(out, inputs), ref_grads, strict=True):
            assert rel_err(got, want) < TOL[dtype]


def test_sde_forward_matches_torchsde_sdeint_on_sub_grid():
    # Observation times a subset of the step grid: torchsde's sdeint, no adjoint, dt = 0.25.
    field, y0, _, _ = sde_setup(torch.float64, 0.25)
    ts = torch.tensor([0.0, 1.0, 4.0, 5.5], dtype=torch.float64)
    dW = sample_increments(22, B, W, 0.25, torch.Generator().manual_seed(3), torch.float64)
    ref = torchsde.sdeint(field, y0, ts, bm=GridBrownian(dW, 0.0, 0.25), method="reversible_heun", dt=0.25)
    inputs = (y0, *field.parameters())
    ref_grads = grads(ref, inputs)
    out = fast_sdeint(field, y0, ts, 0.25, dW)
    assert rel_err(out, ref) < 1e-12
    for got, want in zip(grads(out, inputs), ref_grads, strict=True):
        assert rel_err(got, want) < 1e-12


def test_adjoint_forward_holds_no_graph():
    field, y0, ts, dW = sde_setup(torch.float64, 1.0)
    calls = []

    def probe(t, y):  # records whether any per-step tensor is part of a graph
        f, g = Field.f_and_g(field, t, y)
        calls.append(f.requires_grad or g.requires_grad)
        return f, g

    field.f_and_g = probe
    out = fast_sdeint(field, y0, ts, 1.0, dW, adjoint=True)
    assert type(out.grad_fn).__name__ == "_ReversibleHeunAdjointBackward"
    assert len(calls) == T and not any(calls)
    saved = out.grad_fn.saved_tensors  # final state, ys, time grid, dW and parameters: nothing per step
    assert sum(x.numel() for x in saved if x is not None) < out.numel() + dW.numel() + 4 * B * H * W + 2000
    calls.clear()
    out.sum().backward()
    assert len(calls) == T and all(calls)  # one local re-evaluation per grid point, nothing more
    assert y0.grad is not None and all(p.grad is not None for p in field.parameters())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("solve", ["fast_sdeint", "midpoint_sdeint", "fast_cdeint", "midpoint_cdeint"])
def test_adjoint_refuses_double_backward(solve, fused):
    # torch's once_differentiable returned the gradient without a graph: a penalty built on it silently had no
    # gradient (requires_grad False) and vanished from a summed loss. Now the first backward says so; direct
    # backpropagation (adjoint=False) keeps the graph.
    torch.manual_seed(0)
    if solve.endswith("sdeint"):
        field, y0, ts, dW = sde_setup(torch.float64, 1.0)
        if solve == "fast_sdeint":
            def run(adjoint):
                return fast_sdeint(field, y0, ts, 1.0, dW, adjoint=adjoint, fused=fused)
        else:
            gen = GeneratorSDE(H, W, MLP, 1, 1.0 / (T - 1)).double()  # midpoint's fused path is the generator's
            def run(adjoint):
                return midpoint_sdeint(gen, y0, ts, 1.0, dW, adjoint=adjoint, fused=fused)
    else:
        func = DiscriminatorCDE(C - 1, H, MLP, 1, 1.0 / (T - 1)).double()
        y0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
        X = torch.randn(B, T, C, dtype=torch.float64).cumsum(1)
        solver = fast_cdeint if solve == "fast_cdeint" else midpoint_cdeint
        def run(adjoint):
            return solver(func, y0, X, None, 1.0, adjoint=adjoint, fused=fused)
    with pytest.raises(RuntimeError, match=r"double backward .*Fix: solve with adjoint=False"):
        torch.autograd.grad(run(True).sum(), y0, create_graph=True)
    (gy0,) = torch.autograd.grad(run(False).sum(), y0, create_graph=True)
    assert gy0.requires_grad
    (g,) = torch.autograd.grad(run(True).sum(), y0)  # first order: unchanged
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("all_times", [False, True])
def test_cde_matches_torchcde(dtype, all_times):
    torch.manual_seed(1)
    func = CDEFunc().to(dtype)
    X_values = torch.randn(B, T, C, dtype=dtype).cumsum(1).requires_grad_()
    z0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    coeffs = torchcde.linear_interpolation_coeffs(X_values)
    X = torchcde.LinearInterpolation(coeffs)
    ts = X.grid_points if all_times else X.interval
    ref = torchcde.cdeint(X, func, z0, ts, method="reversible_heun", backend="torchsde", dt=1.0,
                          adjoint_method="adjoint_reversible_heun", adjoint_params=(coeffs,) + tuple(func.parameters()))
    ref = ref.transpose(0, 1)
    inputs = (z0, X_values, *func.parameters())
    ref_grads = grads(ref, inputs)
    for adjoint in (True, False):
        out = fast_cdeint(func, z0, X_values, ts, 1.0, adjoint=adjoint)
        assert out.shape == (len(ts), B, H)
        assert rel_err(out, ref) < TOL[dtype]
        for got, want in zip(grads(out, inputs), ref_grads, strict=True):
            assert rel_err(got, want) < TOL[dtype]


def test_cde_half_step_matches_torchcde():
    # dt = 0.5: mid-piece evaluations use the piece's slope, knots the slope of the piece ending there.
    torch.manual_seed(2)
    func = CDEFunc().double()
    X_values = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    X = torchcde.LinearInterpolation(X_values)
    ref = torchcde.cdeint(X, func, z0, X.interval, method="reversible_heun", backend="torchsde", dt=0.5,
                          adjoint_method="adjoint_reversible_heun",
                          adjoint_params=(X_values,) + tuple(func.parameters()))
    out = fast_cdeint(func, z0, X_values, X.interval, 0.5)
    inputs = (z0, X_values, *func.parameters())
    assert rel_err(out[-1], ref[:, -1]) < 1e-12
    for got, want in zip(grads(out[-1], inputs), grads(ref[:, -1], inputs), strict=True):
        assert rel_err(got, want) < 1e-12


def _check_white_noise(dW, dt):
    # Mean 0, variance dt, uncorrelated across steps and across batch; 6-sigma bounds (sample-size based).
    n = dW.numel()
    x = dW.double() / dt ** 0.5
    assert abs(x.mean().item()) < 6 / n ** 0.5
    assert abs(x.var().item() - 1) < 6 * (2 / n) ** 0.5
    lag_step = (x[1:] * x[:-1]).mean().item()
    lag_batch = (x[:, 1:] * x[:, :-1]).mean().item()
    lag_channel = (x[..., 1:] * x[..., :-1]).mean().item()
    for corr, m in ((lag_step, x[1:].numel()), (lag_batch, x[:, 1:].numel()), (lag_channel, x[..., 1:].numel())):
        assert abs(corr) < 6 / m ** 0.5


@pytest.mark.parametrize("dt", [1.0, 0.25])
def test_increments_statistics_match_brownian_interval(dt):
    n_steps, batch = 40, 400
    ours = sample_increments(n_steps, batch, W, dt, torch.Generator().manual_seed(0), torch.float64)
    bi = torchsde.BrownianInterval(t0=0.0, t1=n_steps * dt, size=(batch, W), dtype=torch.float64, entropy=0, dt=dt)
    theirs = increments_from(bi, 0.0, dt, n_steps)
    assert ours.shape == theirs.shape == (n_steps, batch, W)
    _check_white_noise(ours, dt)
    _check_white_noise(theirs, dt)
    # Two-sample agreement of the variances.
    assert abs(ours.var().item() - theirs.var().item()) / dt < 6 * (4 / ours.numel()) ** 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    field, y0, ts, dW = sde_setup(torch.float64, 1.0)
    out = fast_sdeint(field, y0, ts, 1.0, dW)
    cuda_field = Field().double().cuda()
    cuda_field.load_state_dict(field.state_dict())
    out_cuda = fast_sdeint(cuda_field, y0.detach().cuda(), ts.cuda(), 1.0, dW.cuda())
    assert rel_err(out_cuda.cpu(), out.detach()) < 1e-10


def test_increments_seeded_and_grid_brownian_consistent():
    a = sample_increments(5, 4, W, 0.5, torch.Generator().manual_seed(7))
    b = sample_increments(5, 4, W, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32
    bm = GridBrownian(a, 1.0, 0.5)
    assert torch.equal(bm(1.5, 2.0), a[1])
    assert torch.allclose(bm(1.0, 3.5), a.sum(0)) and torch.allclose(bm(2.0), a[:2].sum(0))
    # off the grid, past its end, and backwards: each refused, not answered with the nearest increments
    with pytest.raises(ValueError, match=r"time 1\.2 is not on the grid t0=1\.0 \+ k \* 0\.5, k = 0\.\.5"):
        bm(1.2, 2.0)
    with pytest.raises(ValueError, match=r"time 4\.0 is not on the grid"):
        bm(1.0, 4.0)
    with pytest.raises(ValueError, match=r"need ta <= tb, got ta=2\.0, tb=1\.5"):
        bm(2.0, 1.5)


# ---- fused path: sdegan's GeneratorSDE / DiscriminatorCDE evaluated with hand-written VJPs

def generator_field(dtype, num_layers=1, seed=0):
    torch.manual_seed(seed)
    return GeneratorSDE(H, W, MLP, num_layers, time_scale=1 / (T - 1)).to(dtype)


def discriminator_field(dtype, num_layers=1, seed=0):
    torch.manual_seed(seed)
    return DiscriminatorCDE(C - 1, H, MLP, num_layers, time_scale=1 / (T - 1)).to(dtype)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_fused_mlp_vjp_equals_autograd(num_layers, monkeypatch):
    monkeypatch.setattr(mlp_module, "CHUNK", 2)  # three recorded evaluations: one full chunk flushed early
    for module, fuse in ((generator_field(torch.float64, num_layers), generator_mlp),
                         (discriminator_field(torch.float64, num_layers), cde_mlp)):
        mlp = fuse(module)
        assert mlp is not None
        t_grid = torch.arange(4, dtype=torch.float64)
        mlp.prepare(t_grid * module.time_scale)
        mlp.start_records(B, t_grid, 3)
        assert mlp.rec.size == 2  # CHUNK as patched: the three evaluations span two chunks
        want_params = None
        for n, k in enumerate((2, 0, 3)):
            z = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
            cot = torch.randn(B, mlp.channels, H, dtype=torch.float64)  # cotangent of the field
            acc = torch.randn(B, H, dtype=torch.float64)
            slot = n % mlp.rec.size
            s = mlp.record(z.detach(), k, slot)
            assert torch.equal(s, mlp.evaluate(z.detach(), k))  # recorded and plain evaluations agree
            if isinstance(module, GeneratorSDE):
                f, g = module.f_and_g(t_grid[k], z)
                ref = torch.cat([f.unsqueeze(1), g.permute(0, 2, 1)], 1)
            else:
                ref = module(t_grid[k], z).transpose(1, 2)
            assert rel_err(s, ref.detach()) < 1e-14
            want = torch.autograd.grad(ref, (z, *mlp.params), cot)
            dz = mlp.vjp(cot, acc, slot=slot)
            assert rel_err(dz, want[0] + acc) < 1e-13
            if slot == mlp.rec.size - 1 or n == 2:  # a full chunk, then the last partial one
                mlp.flush(slot + 1)
            mlp.record(z.detach(), k, mlp.rec.cache)  # state only: the cache slot is never summed
            plain = mlp.vjp(cot, slot=mlp.rec.cache)
            assert rel_err(plain, want[0]) < 1e-13
            want_params = list(want[1:]) if want_params is None else [
                w + x for w, x in zip(want_params, want[1:], strict=True)]
        for got, exp in zip(mlp.param_grads(), want_params, strict=True):
            assert got.shape == exp.shape and rel_err(got, exp) < 1e-13


def _count_output_flushes(monkeypatch) -> list[int]:
    """From now on, the observed steps' output chunks the fused forward solves write, as they are written."""
    flushes, flush = [], fused_module._Outputs.flush
    monkeypatch.setattr(fused_module._Outputs, "flush", lambda self, j: (flushes.append(j), flush(self, j))[1])
    return flushes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers,dt,output_bytes", [(1, 1.0, None), (2, 0.5, None), (1, 1.0, 1)])
def test_fused_generator_matches_torchsde(dtype, num_layers, dt, output_bytes, monkeypatch):
    if output_bytes is not None:  # two observed steps per output chunk: several flushes mid-solve
        monkeypatch.setattr(fused_module, "OUTPUT_BYTES", output_bytes)
    field = generator_field(dtype, num_layers)
    _, y0, ts, dW = sde_setup(dtype, dt)
    inputs = (y0, *field.parameters())
    ref = torchsde.sdeint_adjoint(field, y0, ts, bm=GridBrownian(dW, 0.0, dt), method="reversible_heun",
                                  adjoint_method="adjoint_reversible_heun", dt=dt)
    ref_grads = grads(ref, inputs)
    field.nfe = 0
    flushes = _count_output_flushes(monkeypatch)
    out = fast_sdeint(field, y0, ts, dt, dW)
    assert type(out.grad_fn).__name__ == "_FusedAdjointBackward"
    assert len(flushes) == (1 if output_bytes is None else T // 2)  # T - 1 observed steps, two a chunk
    assert rel_err(out, ref) < TOL[dtype]
    for got, want in zip(grads(out, inputs), ref_grads, strict=True):
        assert rel_err(got, want) < TOL[dtype]
    assert field.nfe == 2 * (round((T - 1) / dt) + 1)  # counted as the generic path counts


def test_fused_generator_at_the_default_experiment_sizes_matches_torchsde(monkeypatch):
    # ou_sdegan's generator: batch 128, hidden 16, noise 3, 63 steps, every step observed. Its observed fields fill
    # several output chunks without any patching (a flush that ran before the step once corrupted the paths
    # from the first chunk boundary on, at these sizes only).
    torch.manual_seed(0)
    steps, batch = 63, 128
    field = GeneratorSDE(16, 3, 16, 1, 1.0 / steps).double()
    y0 = torch.randn(batch, 16, dtype=torch.float64, requires_grad=True)
    ts = torch.arange(steps + 1, dtype=torch.float64)
    dW = sample_increments(steps, batch, 3, 1.0, torch.Generator().manual_seed(1), torch.float64)
    assert batch * 4 * 16 * 8 * steps > fused_module.OUTPUT_BYTES  # 64 KiB per observed step: several chunks
    inputs = (y0, *field.parameters())
    ref = torchsde.sdeint_adjoint(field, y0, ts, bm=GridBrownian(dW, 0.0, 1.0), method="reversible_heun",
                                  adjoint_method="adjoint_reversible_heun", dt=1.0)
    flushes = _count_output_flushes(monkeypatch)
    out = fast_sdeint(field, y0, ts, 1.0, dW)
    assert len(flushes) == 4  # 16 of the 63 observed steps per 1 MiB chunk
    assert type(out.grad_fn).__name__ == "_FusedAdjointBackward"
    assert rel_err(out, ref) < 1e-12
    for got, want in zip(grads(out, inputs), grads(ref, inputs), strict=True):
        assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers,dt,all_times,output_bytes", [(1, 1.0, True, None), (1, 0.5, False, None),
                                                                   (2, 1.0, False, None), (1, 1.0, True, 1)])
def test_fused_discriminator_matches_torchcde(dtype, num_layers, dt, all_times, output_bytes, monkeypatch):
    if output_bytes is not None:  # two observed steps per output chunk (as the CDE encoder's context at its sizes)
        monkeypatch.setattr(fused_module, "OUTPUT_BYTES", output_bytes)
    func = discriminator_field(dtype, num_layers)
    X_values = torch.randn(2 * B, T, C, dtype=dtype).cumsum(1).requires_grad_()
    z0 = torch.randn(2 * B, H, dtype=dtype, requires_grad=True)
    X = torchcde.LinearInterpolation(X_values)
    ts = X.grid_points if all_times else X.interval
    ref = torchcde.cdeint(X, func, z0, ts, method="reversible_heun", backend="torchsde", dt=dt,
                          adjoint_method="adjoint_reversible_heun",
                          adjoint_params=(X_values,) + tuple(func.parameters())).transpose(0, 1)
    flushes = _count_output_flushes(monkeypatch)
    out = fast_cdeint(func, z0, X_values, ts, dt)
    assert type(out.grad_fn).__name__ == "_FusedAdjointBackward"
    assert len(flushes) == (1 if output_bytes is None else len(ts) // 2)
    inputs = (z0, X_values, *func.parameters())
    assert rel_err(out, ref) < TOL[dtype]
    for got, want in zip(grads(out, inputs), grads(ref, inputs), strict=True):
        assert rel_err(got, want) < TOL[dtype]


def test_fused_path_falls_back_to_generic():
    field = generator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    generic = "_ReversibleHeunAdjointBackward"
    assert type(fast_sdeint(field, y0, ts, 1.0, dW, fused=False).grad_fn).__name__ == generic
    extra = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # a tensor the fused path cannot see
    params = (*field.parameters(), extra)
    assert type(fast_sdeint(field, y0, ts, 1.0, dW, adjoint_params=params).grad_fn).__name__ == generic
    handle = field.drift_net.register_forward_hook(lambda m, i, o: o * 2)  # hooks must keep working
    assert type(fast_sdeint(field, y0, ts, 1.0, dW).grad_fn).__name__ == generic
    handle.remove()
    field._input = lambda t, y: torch.cat([t.expand(y.size(0), 1), y], 1)  # f_and_g no longer what is fused
    with pytest.warns(RuntimeWarning, match="probe"):
        out = fast_sdeint(field, y0, ts, 1.0, dW)
    assert type(out.grad_fn).__name__ == generic
    func = discriminator_field(torch.float64)
    func.net.append(nn.Identity())  # not a plain MLP any more
    assert cde_mlp(func) is None


def test_fused_partial_adjoint_params():
    field = generator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    params = tuple(field.drift_net.parameters())
    out = fast_sdeint(field, y0, ts, 1.0, dW, adjoint_params=params)
    assert type(out.grad_fn).__name__ == "_FusedAdjointBackward"
    ref = fast_sdeint(field, y0, ts, 1.0, dW, adjoint_params=params, fused=False)
    assert type(ref.grad_fn).__name__ == "_ReversibleHeunAdjointBackward"
    for got, want in zip(grads(out, (y0, *params)), grads(ref, (y0, *params)), strict=True):
        assert rel_err(got, want) < 1e-12
    out = fast_sdeint(field, y0, ts, 1.0, dW, adjoint_params=params)
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in params]
    out.sum().backward()  # a retained graph can be differentiated again
    assert all(torch.equal(p.grad, 2 * g) for p, g in zip(params, first, strict=True))
    assert all(p.grad is None for p in field.diffusion_net.parameters())


# ---- midpoint: torchsde's method="midpoint" discretisation; adjoint=True torchsde's continuous midpoint adjoint
# (sdeint_adjoint / torchcde adjoint=True, adjoint_method="midpoint"), adjoint=False exact backprop (sdeint)

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dt", [1.0, 0.5])
def test_midpoint_generator_matches_torchsde(dtype, dt):
    _, y0, ts, dW = sde_setup(dtype, dt)
    fields = ((generator_field(dtype), "_FusedMidpointAdjointBackward"), (sde_setup(dtype, dt)[0], None))
    for field, fused_name in fields:
        inputs = (y0, *field.parameters())
        for adjoint in (True, False):
            solve = torchsde.sdeint_adjoint if adjoint else torchsde.sdeint
            kw = {"adjoint_method": "midpoint"} if adjoint else {}
            ref = solve(field, y0, ts, bm=GridBrownian(dW, 0.0, dt), method="midpoint", dt=dt, **kw)
            ref_grads = grads(ref, inputs)
            out = midpoint_sdeint(field, y0, ts, dt, dW, adjoint=adjoint)
            want = (fused_name or "_GenericAdjointBackward") if adjoint else "StackBackward0"
            assert type(out.grad_fn).__name__ == want
            assert out.shape == (T, B, H) and rel_err(out, ref) < TOL[dtype]
            for got, want in zip(grads(out, inputs), ref_grads, strict=True):
                assert rel_err(got, want) < TOL[dtype]


def test_midpoint_adjoint_is_not_backprop_and_keeps_nothing_per_step():
    # The continuous adjoint differs from the exact gradient of the discretisation (at O(dt)), and the forward
    # saves only the outputs and controls.
    field = generator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    inputs = (y0, *field.parameters())
    out = midpoint_sdeint(field, y0, ts, 1.0, dW)
    saved = out.grad_fn.saved_tensors  # ys and the controls [dt, dW_k]
    assert sum(x.numel() for x in saved if x is not None) <= out.numel() + dW.numel() + (T - 1) * B
    adj, exact = grads(out, inputs), grads(midpoint_sdeint(field, y0, ts, 1.0, dW, adjoint=False), inputs)
    assert max(rel_err(a, e) for a, e in zip(adj, exact, strict=True)) > 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dt,all_times", [(1.0, True), (0.5, False)])
def test_midpoint_discriminator_matches_torchcde(dtype, dt, all_times):
    # dt = 0.5: half-steps at quarter points; the drift at t + dt/2 uses the slope of the piece containing it.
    func = discriminator_field(dtype)
    X_values = torch.randn(2 * B, T, C, dtype=dtype).cumsum(1).requires_grad_()
    z0 = torch.randn(2 * B, H, dtype=dtype, requires_grad=True)
    X = torchcde.LinearInterpolation(X_values)
    ts = X.grid_points if all_times else X.interval
    inputs = (z0, X_values, *func.parameters())
    for adjoint in (True, False):
        kw = {"adjoint_method": "midpoint", "adjoint_params": (X_values, *func.parameters())} if adjoint else {}
        ref = torchcde.cdeint(X, func, z0, ts, method="midpoint", backend="torchsde", dt=dt, adjoint=adjoint,
                              **kw).transpose(0, 1)
        ref_grads = grads(ref, inputs)
        out = midpoint_cdeint(func, z0, X_values, ts, dt, adjoint=adjoint)
        assert type(out.grad_fn).__name__ == ("_FusedMidpointAdjointBackward" if adjoint else "StackBackward0")
        assert out.shape == (len(ts), 2 * B, H) and rel_err(out, ref) < TOL[dtype]
        for got, want in zip(grads(out, inputs), ref_grads, strict=True):
            assert rel_err(got, want) < TOL[dtype]


def test_midpoint_generic_cde_field_and_nfe():
    # A field the fused path cannot see (test CDEFunc) takes the autograd adjoint; the generator counts 2 stages
    # per step forward and 2 re-evaluations per step in the adjoint's backward.
    torch.manual_seed(3)
    func = CDEFunc().double()
    X_values = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    X = torchcde.LinearInterpolation(X_values)
    inputs = (z0, X_values, *func.parameters())
    for adjoint in (True, False):
        kw = {"adjoint_method": "midpoint", "adjoint_params": (X_values, *func.parameters())} if adjoint else {}
        ref = torchcde.cdeint(X, func, z0, X.interval, method="midpoint", backend="torchsde", dt=1.0,
                              adjoint=adjoint, **kw)
        out = midpoint_cdeint(func, z0, X_values, X.interval, 1.0, adjoint=adjoint)
        assert type(out.grad_fn).__name__ == ("_GenericAdjointBackward" if adjoint else "StackBackward0")
        assert rel_err(out[-1], ref[:, -1]) < 1e-12
        for got, want in zip(grads(out[-1], inputs), grads(ref[:, -1], inputs), strict=True):
            assert rel_err(got, want) < 1e-12
    field = generator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    for fused in (True, False):
        field.nfe = 0
        out = midpoint_sdeint(field, y0, ts, 1.0, dW, fused=fused)
        assert field.nfe == 2 * (T - 1)
        out.sum().backward()
        assert field.nfe == 4 * (T - 1)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_a_diffusion_of_the_wrong_noise_type_is_refused(method, adjoint):
    # torchsde refuses these; the fast reversible Heun failed inside a step (permute, broadcasting), midpoint solved
    # a (batch, state) diffusion as diagonal noise and a (batch, state, state) one declared diagonal as general noise.
    from neuralsde.solver import SolverConfig, sdeint

    field, y0, ts, _ = sde_setup(torch.float64, 1.0)
    dW = sample_increments(T - 1, B, H, 1.0, torch.Generator().manual_seed(1), torch.float64)
    vector = types.SimpleNamespace(f_and_g=lambda t, y: (field.f_and_g(t, y)[0], torch.sigmoid(y)))
    solve = fast_sdeint if method == "reversible_heun" else midpoint_sdeint
    with pytest.raises(ValueError, match=r"diffusion returned shape \(8, 8\): general noise expects .* = \(8, 8, 8\)"):
        solve(vector, y0, ts, 1.0, dW, adjoint=adjoint, adjoint_params=tuple(field.parameters()), fused=False)

    class Declared(nn.Module):  # says diagonal, returns a matrix
        sde_type, noise_type, noise_size = "stratonovich", "diagonal", H

        def f(self, t, y):
            return field.f_and_g(t, y)[0]

        def g(self, t, y):
            return torch.diag_embed(torch.sigmoid(y))
    cfg = SolverConfig(backend="fast", method=method, adjoint=adjoint)
    with pytest.raises(ValueError, match=r"shape \(8, 8, 8\): diagonal noise expects \(batch, state\) = \(8, 8\)"):
        sdeint(Declared().double(), y0, ts, cfg, entropy=0)


@pytest.mark.parametrize("solve", [fast_cdeint, midpoint_cdeint])
def test_a_path_of_the_wrong_shape_is_refused(solve):
    func, z0 = CDEFunc().double(), torch.zeros(B, H, dtype=torch.float64)
    for X_values in (torch.zeros(B, T, dtype=torch.float64), torch.zeros(B, 1, C, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"X_values must have shape \(batch, length >= 2, channels\)"):
            solve(func, z0, X_values)


def test_solver_config_fast_midpoint():
    from neuralsde.errors import ConfigError
    from neuralsde.solver import SolverConfig
    from sdegan.components.discriminator import Discriminator
    from sdegan.components.generator import Generator
    cfg = SolverConfig(backend="fast", method="midpoint")
    assert cfg.adjoint_method == "midpoint"
    with pytest.raises(ConfigError, match="euler_heun"):
        SolverConfig(backend="fast", method="euler_heun")
    torch.manual_seed(0)
    gen = Generator(C - 1, hidden_size=H, mlp_size=MLP, t_size=T, solver=cfg).double()
    disc = Discriminator(C - 1, hidden_size=H, mlp_size=MLP, t_size=T, solver=cfg).double()
    gen.sde.nfe = 0
    paths = gen(torch.linspace(0, 1, T, dtype=torch.float64), B, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (B, T, C) and gen.sde.nfe == 2 * (T - 1)  # the midpoint solver ran
    disc(paths).sum().backward()
    assert all(p.grad is not None for p in gen.parameters()) and all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_fused_solves_are_independent_of_the_record_chunk(chunk, monkeypatch):
    # Chunk boundaries carry the cotangent ring, the z reconstruction and the per-chunk control gradients;
    # T - 1 = 15 steps leave a last chunk of 1 (chunk 2, 3, 5 over 16 or 15 records).
    field, func = generator_field(torch.float64), discriminator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    X_values = torch.randn(2 * B, T, C, dtype=torch.float64).cumsum(1).requires_grad_()
    z0 = torch.randn(2 * B, H, dtype=torch.float64, requires_grad=True)
    sparse = ts[[0, 5, T - 1]]

    def solves():
        out = []
        for solve in (fast_sdeint, midpoint_sdeint):
            for times in (ts, sparse):
                ys = solve(field, y0, times, 1.0, dW)
                out.append((ys, *grads(ys, (y0, *field.parameters()))))
        for solve in (fast_cdeint, midpoint_cdeint):
            for times in (ts, sparse):
                zs = solve(func, z0, X_values, times, 1.0)
                out.append((zs, *grads(zs, (z0, X_values, *func.parameters()))))
        return out

    whole = solves()
    monkeypatch.setattr(mlp_module, "CHUNK", chunk)
    sizes, start_records = [], mlp_module.FusedMLP.start_records
    monkeypatch.setattr(mlp_module.FusedMLP, "start_records",
                        lambda self, *a, **k: (start_records(self, *a, **k), sizes.append(self.rec.size)))
    for got, want in zip(solves(), whole, strict=True):
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) < 1e-12
    # every solve recorded in chunks of this size (reversible Heun's ring needs two slots), not in one chunk
    assert len(sizes) == 8 and set(sizes) == ({1, 2} if chunk == 1 else {chunk})


def test_probe_runs_once_per_module_until_its_code_changes(monkeypatch):
    from neuralsde.fast import probe
    field = generator_field(torch.float64)
    _, y0, ts, dW = sde_setup(torch.float64, 1.0)
    probes = []
    agrees = probe.agrees
    monkeypatch.setattr(probe, "agrees", lambda *a: probes.append(1) or agrees(*a))
    for _ in range(3):
        out = fast_sdeint(field, y0, ts, 1.0, dW)
        assert type(out.grad_fn).__name__ == "_FusedAdjointBackward"
    assert len(probes) == 1  # probed once, not per solve
    field._input = lambda t, y: torch.cat([t.expand(y.size(0), 1), y], 1)  # an instance override after caching
    with pytest.warns(RuntimeWarning, match="probe"):
        out = fast_sdeint(field, y0, ts, 1.0, dW)
    assert len(probes) == 2 and type(out.grad_fn).__name__ == "_ReversibleHeunAdjointBackward"
    del field._input
    handle = field.drift_net.register_forward_hook(lambda m, i, o: o * 2)  # hooks are checked on every call
    assert type(fast_sdeint(field, y0, ts, 1.0, dW).grad_fn).__name__ == "_ReversibleHeunAdjointBackward"
    handle.remove()
    assert type(fast_sdeint(field, y0, ts, 1.0, dW).grad_fn).__name__ == "_FusedAdjointBackward"


@pytest.mark.parametrize("perm", [[0, 1, 2, 3], [0, 2, 1, 3]])
def test_fused_weight_gradient_blocks(perm):
    # Two heads: their block-diagonal layer's weight gradient is summed block by block when each head's outputs
    # stay contiguous after the permutation, and as one full product when they interleave.
    from neuralsde.fast.mlp import FusedMLP
    torch.manual_seed(0)
    heads = [nn.Sequential(nn.Linear(1 + H, MLP), nn.SiLU(), nn.Linear(MLP, 2), nn.Tanh()).double() for _ in range(2)]
    fused = FusedMLP(heads, perm, channels=2, hidden=2)
    assert (fused._blocks_at[1] is None) == (perm != [0, 1, 2, 3])
    fused.prepare(torch.zeros(1, dtype=torch.float64))
    fused.start_records(B, torch.zeros(1, dtype=torch.float64), 1)
    z = torch.randn(B, H, dtype=torch.float64)
    cot = torch.randn(B, 2, 2, dtype=torch.float64)
    fused.record(z, 0, 0)
    fused.vjp(cot, slot=0)
    fused.flush(1)
    x = torch.cat([torch.zeros(B, 1, dtype=torch.float64), z], 1)
    out = torch.cat([h(x) for h in heads], 1)[:, perm].view(B, 2, 2)
    want = torch.autograd.grad(out, fused.params, cot)
    for got, exp in zip(fused.param_grads(), want, strict=True):
        assert rel_err(got, exp) < 1e-13


def test_fused_kernels_equal_the_methods():
    # evaluator()/kernels() are straight-line copies of evaluate/record/vjp for one hidden layer and a final
    # tanh: the same ops in the same order, so the same bits; other structures get the methods themselves.
    for module, fuse in ((generator_field(torch.float64), generator_mlp),
                         (discriminator_field(torch.float64), cde_mlp)):
        mlp = fuse(module)
        mlp.prepare(torch.arange(4, dtype=torch.float64) * module.time_scale)
        z = torch.randn(B, H, dtype=torch.float64)
        cot = torch.randn(B, mlp.channels, H, dtype=torch.float64)
        acc = torch.randn(B, H, dtype=torch.float64)
        assert torch.equal(mlp.evaluator()(z, 2), mlp.evaluate(z, 2))
        mlp.start_records(B, z, 4)
        record, vjp = mlp.kernels()
        assert record is not mlp.record and vjp is not mlp.vjp
        got = (record(z, 1, 0).clone(), vjp(cot, acc, slot=0), mlp.rec.d[0][0].clone())
        want = (mlp.record(z, 1, 1), mlp.vjp(cot, acc, slot=1), mlp.rec.d[0][1])
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    two = generator_mlp(generator_field(torch.float64, num_layers=2))
    two.prepare(torch.zeros(1, dtype=torch.float64))
    two.start_records(B, z, 1)
    assert two.kernels() == (two.record, two.vjp) and two.evaluator() == two.evaluate


@pytest.mark.parametrize("every, contraction", [(1, None), (3, None), (1, "gemm"), (1, "sum"), (1, "addcmul")])
def test_fused_paths_equal_the_generic_path_at_sizes_that_fill_several_chunks(every, contraction, monkeypatch):
    # batch 64, hidden 32, 70 steps: several record chunks and (every step observed) several output chunks, with
    # no patched budgets; the generic path is autograd per step around the same adjoint. Each way of contracting
    # the field with its control, forced; None: as chosen by shape.
    monkeypatch.setattr(fused_module, "CONTRACTION", contraction)
    torch.manual_seed(0)
    steps, batch, hidden = 70, 64, 32
    ts = torch.arange(0, steps + 1, every, dtype=torch.float64)
    ts = torch.cat([ts, ts.new_tensor([steps])]) if ts[-1] != steps else ts
    sde = GeneratorSDE(hidden, 3, 16, 1, 1.0 / steps).double()
    y0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    dW = sample_increments(steps, batch, 3, 1.0, torch.Generator().manual_seed(1), torch.float64)
    func = DiscriminatorCDE(2, hidden, 16, 1, 1.0 / steps).double()
    X_values = torch.randn(batch, steps + 1, 3, dtype=torch.float64).cumsum(1).requires_grad_()
    cases = [(solve, lambda fused, s=solve: s(sde, y0, ts, 1.0, dW, fused=fused), (y0, *sde.parameters()))
             for solve in (fast_sdeint, midpoint_sdeint)]
    cases += [(solve, lambda fused, s=solve: s(func, y0, X_values, ts, 1.0, fused=fused),
               (y0, X_values, *func.parameters())) for solve in (fast_cdeint, midpoint_cdeint)]
    for solve, run, inputs in cases:
        fused, generic = run(True), run(False)
        assert "Fused" in type(fused.grad_fn).__name__, solve.__name__
        assert type(generic.grad_fn).__name__ in ("_ReversibleHeunAdjointBackward", "_GenericAdjointBackward")
        assert rel_err(fused, generic) < 1e-12, solve.__name__
        for got, want in zip(grads(fused, inputs), grads(generic, inputs), strict=True):
            assert rel_err(got, want) < 1e-10, solve.__name__


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_sdegan_gradients_equal_across_backends_at_the_default_sizes(method, monkeypatch):
    # ou_sdegan's generator and discriminator (batch 128, 64 times, default widths), float64, the same initial
    # noise and Brownian increments on both backends: one loss E[D(fake)] - E[D(real)], every parameter's gradient.
    import copy

    import neuralsde.fast
    import neuralsde.solver
    from neuralsde.solver import SolverConfig
    from sdegan.components.discriminator import Discriminator
    from sdegan.components.generator import Generator

    batch, length = 128, 64
    dW = sample_increments(length - 1, batch, 3, 1.0, torch.Generator().manual_seed(1), torch.float64)
    monkeypatch.setattr(neuralsde.fast, "sample_increments", lambda *a, **k: dW)
    monkeypatch.setattr(neuralsde.solver, "make_brownian", lambda *a, **k: GridBrownian(dW, 0.0, 1.0))
    torch.manual_seed(0)
    gen, disc = Generator(1, t_size=length).double(), Discriminator(1, t_size=length).double()
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    real = torch.cat([times.view(1, -1, 1).expand(batch, -1, 1),
                      torch.randn(batch, length, 1, dtype=torch.float64).cumsum(1) * 0.1], -1)
    out, solved = {}, record_library_solves(monkeypatch)
    for backend in ("torchsde", "fast"):
        g, d = copy.deepcopy(gen), copy.deepcopy(disc)
        g.solver = d.solver = SolverConfig(method=method, backend=backend)
        solved.clear()
        fake = g(times, batch, generator=torch.Generator().manual_seed(2))
        scores = d(torch.cat([fake, real]))
        assert solved == (["GeneratorSDE", "cdeint", "_VectorField"] if backend == "torchsde" else []), solved
        loss = scores[:batch].mean() - scores[batch:].mean()
        params = [*g.parameters(), *d.parameters()]
        out[backend] = (fake, *torch.autograd.grad(loss, params))
    for fast, ref in zip(out["fast"], out["torchsde"], strict=True):  # (the readout bias's gradient is exactly 0)
        assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max().clamp_min(1e-300)


@pytest.mark.parametrize("batch, channels, hidden", [(5, 4, 16), (300, 2, 16), (256, 9, 32), (128, 27, 64)])
def test_contractions_agree(batch, channels, hidden, monkeypatch):
    # z + alpha sum_c F[:, c] c[:, c], every mode against einsum (float64), into a given out and a new tensor.
    mlp = types.SimpleNamespace(channels=channels, hidden=hidden,
                                q=torch.eye(hidden, dtype=torch.float64).repeat(channels, 1))
    gen = torch.Generator().manual_seed(0)
    F, ctrl, z = (torch.randn(*s, generator=gen, dtype=torch.float64)
                  for s in ((batch, channels, hidden), (batch, channels, 1), (batch, hidden)))
    want = z - 0.5 * torch.einsum("bch,bc->bh", F, ctrl[..., 0])
    for mode in ("gemm", "sum", "addcmul"):
        monkeypatch.setattr(fused_module, "CONTRACTION", mode)
        contract = fused_module._Contract(mlp, batch, z)
        assert contract.mode == mode
        out = torch.empty_like(z)
        assert contract(z, ctrl, F, alpha=-0.5, out=out) is out
        assert torch.allclose(out, want, rtol=1e-13, atol=1e-13), mode
        assert torch.allclose(contract(z, ctrl, F.clone(), -0.5, prod=F.clone()), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("rows, channels, hidden", [(40, 2, 16), (40, 27, 64)])
def test_transpose_contraction_both_ways(rows, channels, hidden):
    # F^T a per row: the batched product (narrow fields) and the product-and-sum (wide ones) against einsum.
    gen = torch.Generator().manual_seed(0)
    F = torch.randn(rows, channels, hidden, generator=gen, dtype=torch.float64)
    a = torch.randn(rows, hidden, generator=gen, dtype=torch.float64)
    assert (channels * hidden > fused_module.BMM_MAX) == (channels == 27)
    out = torch.empty(rows, channels, dtype=torch.float64)
    fused_module.transpose_contract(F, a, out)
    assert torch.allclose(out, torch.einsum("rch,rh->rc", F, a), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("fused", [True, False])
def test_training_solve_after_an_inference_mode_solve(fused, monkeypatch):
    # Lightning validates under inference mode; grids and index tensors it first built there are cached for every
    # later solve, and a training solve must still be able to save them for backward (generic path: compiled fields)
    from neuralsde.fast import grids, scratch

    for module, cache in ((grids, "_GRIDS"), (scratch, "_INDEX")):  # empty, whatever earlier tests built
        monkeypatch.setattr(module, cache, {})
    func = discriminator_field(torch.float64)
    field = generator_field(torch.float64)
    steps = 37 if fused else 41
    X_values = torch.randn(B, steps, C, dtype=torch.float64).cumsum(1)
    z0 = torch.randn(B, H, dtype=torch.float64)
    y0 = torch.randn(B, H, dtype=torch.float64)
    ts = torch.arange(steps, dtype=torch.float64)
    dW = sample_increments(steps - 1, B, W, 1.0, torch.Generator().manual_seed(0), torch.float64)
    with torch.inference_mode():
        fast_cdeint(func, z0, X_values, fused=fused)
        fast_sdeint(field, y0, ts, 1.0, dW, fused=fused)
    inputs = (X_values.requires_grad_(), y0.requires_grad_())
    loss = fast_cdeint(func, z0, X_values, fused=fused).sum() + fast_sdeint(field, y0, ts, 1.0, dW, fused=fused).sum()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, inputs))
