"""The latent SDE's KL path term on the fast backend equals torchsde's ``logqp=True`` on the same increments, and
the fused field (hand-written VJPs) equals the autograd path."""
import warnings

import pytest
import torch
import torchsde

from latent_sde.components.sdes import LatentSDEFunc, PriorSDE
from neuralsde.fast import GridBrownian, sample_increments
from neuralsde.fast.latent import FusedLatent, fused_latent
from neuralsde.fast.logqp import fast_sdeint_logqp
from neuralsde.fast.reversible_heun import fast_sdeint_diagonal
from neuralsde.solver import SolverConfig, fast_handles, sdeint
from tests.autograd_graph import adjoint_nodes

B, D, CTX, T = 5, 3, 4, 9


def make(dtype, seed=0):
    torch.manual_seed(seed)
    sde = LatentSDEFunc(D, CTX, 8, 1, 6, 1e-3, 1.0, T).to(dtype)
    context = torch.randn(B, T, CTX, dtype=dtype, requires_grad=True)
    sde.set_context(context)
    y0 = torch.randn(B, D, dtype=dtype, requires_grad=True)
    return sde, context, y0, torch.arange(T, dtype=dtype)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _loss(ys, log_ratio):
    weights = torch.linspace(1, 2, log_ratio.numel(), dtype=ys.dtype).view_as(log_ratio)
    return (ys ** 2).sum() + (log_ratio * weights).sum()


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_logqp_equals_torchsde(dtype, tol, adjoint, method):
    sde, context, y0, ts = make(dtype)
    params = (*sde.parameters(), context)
    dW = sample_increments(T - 1, B, D + 1, 1.0, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ys, log_ratio = fast_sdeint_logqp(sde, y0, ts, 1.0, dW, adjoint=adjoint, adjoint_params=params, method=method)
    fast = (ys, log_ratio, *torch.autograd.grad(_loss(ys, log_ratio), (y0, *params)))
    solve = torchsde.sdeint_adjoint if adjoint else torchsde.sdeint
    adjoint_method = "adjoint_reversible_heun" if method == "reversible_heun" else "midpoint"
    extra = dict(adjoint_method=adjoint_method, adjoint_params=params) if adjoint else {}
    ys, log_ratio = solve(sde, y0, ts, bm=GridBrownian(dW, 0.0, 1.0), method=method, dt=1.0, logqp=True, **extra)
    ref = (ys, log_ratio, *torch.autograd.grad(_loss(ys, log_ratio), (y0, *params)))
    assert ref[-1].abs().sum() > 0  # the context gets a gradient (the encoder learns through it)
    assert log_ratio.shape == (T - 1, B) and (log_ratio >= 0).all()
    errors = [rel(a, b) for a, b in zip(fast, ref, strict=True)]
    assert max(errors) < tol, errors


def test_adjoint_gradients_equal_direct_backpropagation():
    sde, context, y0, ts = make(torch.float64)
    params = (*sde.parameters(), context)
    dW = sample_increments(T - 1, B, D + 1, 1.0, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for adjoint in (True, False):
        ys, log_ratio = fast_sdeint_logqp(sde, y0, ts, 1.0, dW, adjoint=adjoint, adjoint_params=params)
        assert bool(adjoint_nodes(ys.grad_fn)) == adjoint  # an adjoint against backpropagation, not one twice
        grads.append(torch.autograd.grad(_loss(ys, log_ratio), (y0, *params)))
    assert max(rel(a, b) for a, b in zip(*grads, strict=True)) < 1e-12


def test_diagonal_solve_without_kl_equals_torchsde():
    sde, _, y0, ts = make(torch.float64)
    prior = PriorSDE(sde)
    dW = sample_increments(T - 1, B, D, 1.0, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ys = fast_sdeint_diagonal(prior, y0, ts, 1.0, dW, adjoint=False)
    ref = torchsde.sdeint(prior, y0, ts, bm=GridBrownian(dW, 0.0, 1.0), method="reversible_heun", dt=1.0)
    assert rel(ys, ref) < 1e-13
    # midpoint, through sdeint's fast dispatch (increments from the entropy), with the continuous adjoint's gradients
    dW = sample_increments(T - 1, B, D, 1.0, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mid = SolverConfig(backend="fast", method="midpoint")
    ys = sdeint(prior, y0, ts, mid, entropy=5)
    fast = (ys, *torch.autograd.grad((ys ** 2).sum(), (y0, *prior.parameters())))
    ref = torchsde.sdeint_adjoint(prior, y0, ts, bm=GridBrownian(dW, 0.0, 1.0), method="midpoint", dt=1.0,
                                  adjoint_method="midpoint").transpose(0, 1)
    ref = (ref, *torch.autograd.grad((ref ** 2).sum(), (y0, *prior.parameters())))
    assert max(rel(a, b) for a, b in zip(fast, ref, strict=True)) < 1e-12


def test_bad_input_names_the_problem():
    sde, _, y0, ts = make(torch.float64)
    dW = torch.zeros(T - 1, B, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="d \\+ 1 = 4 channels"):
        fast_sdeint_logqp(sde, y0, ts, 1.0, dW)
    with pytest.raises(ValueError, match="method='euler_heun'.*reversible_heun or midpoint"):
        fast_sdeint_logqp(sde, y0, ts, 1.0, torch.zeros(T - 1, B, D + 1, dtype=torch.float64), method="euler_heun")
    sde.noise_type = "general"
    with pytest.raises(ValueError, match="diagonal noise.*backend=torchsde"):
        fast_sdeint_logqp(sde, y0, ts, 1.0, torch.zeros(T - 1, B, D + 1, dtype=torch.float64))


def test_sdeint_dispatches_diagonal_reversible_heun_to_the_fast_backend():
    sde, context, y0, ts = make(torch.float64)
    fast = SolverConfig(backend="fast")
    assert fast_handles(fast, sde) and fast_handles(SolverConfig(backend="fast", method="midpoint"), sde)
    assert not fast_handles(SolverConfig(backend="torchsde"), sde)
    zs, kl = sdeint(sde, y0, ts, fast, entropy=7, adjoint_params=(*sde.parameters(), context), logqp=True)
    assert zs.shape == (B, T, D) and kl.shape == (B, T - 1)
    # the increments come from the entropy: same entropy, same solve (the torchsde-equivalence tests cover values)
    dW = sample_increments(T - 1, B, D + 1, 1.0, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ys, log_ratio = fast_sdeint_logqp(sde, y0, ts, 1.0, dW, adjoint_params=(*sde.parameters(), context))
    assert torch.equal(zs, ys.transpose(0, 1)) and torch.equal(kl, log_ratio.transpose(0, 1))
    other, _ = sdeint(sde, y0, ts, fast, entropy=8, logqp=True)
    assert not torch.equal(other, zs)


def test_sdeint_says_when_the_fast_backend_hands_an_sde_to_torchsde(recwarn):
    # A general-noise SDE is not the fast backend's: it was solved by torchsde without a word (slower, other noise).
    sde, _, y0, ts = make(torch.float64)
    prior = PriorSDE(sde)
    sdeint(prior, y0, ts, SolverConfig(backend="fast"), entropy=1)
    assert not [w for w in recwarn if "backend=fast" in str(w.message)]
    prior.noise_type = "general"
    prior.g = lambda t, y: torch.diag_embed(sde.g(t, y))  # the same diffusion as a (B, d, d) matrix
    with pytest.warns(RuntimeWarning, match="noise_type='general'.*solved by torchsde.*solver.backend=torchsde"):
        zs = sdeint(prior, y0, ts, SolverConfig(backend="fast"), entropy=1)
    assert zs.shape == (B, T, D)


# ---------------------------------------------------------------- the fused field (hand-written VJPs)

def _counted(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapped


def _solve_both(sde, context, y0, ts, dt, seed=4, method="reversible_heun"):
    dtype = y0.dtype
    n = round(float(ts[-1] - ts[0]) / dt)
    dW = sample_increments(n, y0.size(0), y0.size(1) + 1, dt, generator=torch.Generator().manual_seed(seed),
                           dtype=dtype)
    params = (*sde.parameters(), context)
    out = []
    for fused in (True, False):
        ys, log_ratio = fast_sdeint_logqp(sde, y0, ts, dt, dW, adjoint_params=params, fused=fused, method=method)
        out.append((ys, log_ratio, *torch.autograd.grad(_loss(ys, log_ratio), (y0, *params))))
    return out


@pytest.mark.parametrize("num_layers, dt, chunk, method", [(1, 1.0, None, "reversible_heun"),
                                                          (2, 1.0, None, "reversible_heun"),
                                                          (2, 0.5, None, "reversible_heun"),
                                                          (2, 0.5, 3, "reversible_heun"), (1, 1.0, None, "midpoint"),
                                                          (2, 0.5, 3, "midpoint")])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fused_latent_field_equals_the_autograd_path(dtype, tol, num_layers, dt, chunk, method, monkeypatch):
    monkeypatch.setattr("neuralsde.fast.latent.CHUNK", chunk)  # 3: 17 evaluations make five full chunks and a part
    if chunk is not None:  # and first-layer biases made 3 evaluations at a time: midpoint's adjoint evicts blocks
        monkeypatch.setattr("neuralsde.fast.latent.BIAS_ROWS", chunk)
    torch.manual_seed(0)
    sde = LatentSDEFunc(D, CTX, 8, num_layers, 6, 1e-3, 1.0, T).to(dtype)
    context = torch.randn(B, T, CTX, dtype=dtype, requires_grad=True)
    sde.set_context(context)
    y0 = torch.randn(B, D, dtype=dtype, requires_grad=True)
    ts = torch.arange(T, dtype=dtype)
    Y0 = torch.cat([y0, torch.zeros(B, 1, dtype=dtype)], 1)
    assert fused_latent(sde, (*sde.parameters(), context), torch.arange(0, T - 0.5, dt, dtype=dtype), Y0)
    calls, param_grads = [], FusedLatent.param_grads
    monkeypatch.setattr(FusedLatent, "param_grads",
                        lambda self, params: calls.append(self.chunk.size) or param_grads(self, params))
    fused, generic = _solve_both(sde, context, y0, ts, dt, method=method)
    assert len(calls) == 1  # the fused field ran (once: the generic solve does not use it) ...
    assert chunk is None or calls == [chunk]  # ... in chunks of the size patched in
    assert generic[-1].abs().sum() > 0 and all(g is not None for g in fused)
    errors = [rel(a, b) for a, b in zip(fused, generic, strict=True)]
    assert max(errors) < tol, errors


def test_fused_latent_field_steps_aside_where_it_would_differ(monkeypatch):
    sde, context, y0, ts = make(torch.float64)
    Y0 = torch.cat([y0, torch.zeros(B, 1, dtype=torch.float64)], 1)
    params = (*sde.parameters(), context)
    assert fused_latent(sde, params, ts, Y0) is not None
    assert fused_latent(sde, (*params, torch.zeros(1, requires_grad=True)), ts, Y0) is None  # a foreign tensor
    sde.f = sde.h  # an instance override (the KL test's): only the module path sees it
    assert fused_latent(sde, params, ts, Y0) is None
    del sde.f
    handle = sde.prior_net.register_forward_hook(lambda *a: None)
    assert fused_latent(sde, params, ts, Y0) is None
    handle.remove()
    # code the structure check cannot see: the probe notices, warns, and the solve takes the autograd path
    monkeypatch.setattr(LatentSDEFunc, "h", lambda self, t, y: 2 * self.time_scale * self.prior_net(
        torch.cat([self._time(t, y), y], dim=1)))
    with pytest.warns(RuntimeWarning, match="disagrees"):
        assert fused_latent(sde, params, ts, Y0) is None
    with pytest.warns(RuntimeWarning, match="disagrees"):
        fused, generic = _solve_both(sde, context, y0, ts, 1.0)
    assert max(rel(a, b) for a, b in zip(fused, generic, strict=True)) == 0


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_fused_latent_field_sums_a_layer_the_drifts_share(method, monkeypatch):
    # Tied posterior and prior layers: the fused VJP once kept only the prior's part of the shared layer's gradient.
    sde, context, y0, ts = make(torch.float64)
    sde.prior_net[-1] = sde.posterior_net[-1]
    Y0 = torch.cat([y0, torch.zeros(B, 1, dtype=torch.float64)], 1)
    assert fused_latent(sde, (*sde.parameters(), context), ts, Y0) is not None  # the fused field is what is tested
    calls = []
    monkeypatch.setattr(FusedLatent, "param_grads", _counted(FusedLatent.param_grads, calls))
    fused, generic = _solve_both(sde, context, y0, ts, 1.0, method=method)
    assert calls == [1]  # the fused solve ran it, the generic one did not
    assert max(rel(a, b) for a, b in zip(fused, generic, strict=True)) < 1e-12


def test_a_diverged_field_is_no_disagreement_of_the_fused_path():
    """Parameters gone NaN (a learning rate too high) made every probe 'disagree' with a RuntimeWarning about the
    fused path, before the NaN loss stopped the run with the actual cause."""
    sde, context, y0, ts = make(torch.float64)
    Y0 = torch.cat([y0, torch.zeros(B, 1, dtype=torch.float64)], 1)
    with torch.no_grad():
        next(sde.posterior_net.parameters()).fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused_latent(sde, (*sde.parameters(), context), ts, Y0) is not None
