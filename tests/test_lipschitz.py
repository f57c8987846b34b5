"""Weight clipping bounds and LipSwish's Lipschitz constant."""
import pytest
import torch

from neuralsde.lipschitz import clip_weights, gradient_penalty
from neuralsde.nn import LipSwish
from sdegan.components.discriminator import Discriminator


def test_lipswish_is_1_lipschitz_on_a_grid():
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    y = LipSwish()(x)
    slopes = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    assert slopes.abs().max() <= 1.0
    assert slopes.abs().max() > 0.99  # and not much less: the 0.909 scale is tight


def test_every_linear_weight_within_bound_after_clipping():
    disc = Discriminator(data_size=3, hidden_size=8, mlp_size=8, num_layers=2)
    for p in disc.parameters():
        torch.nn.init.normal_(p, std=10.0)
    clip_weights(disc)
    layers = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) >= 5
    for layer in layers:
        assert layer.weight.abs().max() <= 1.0 / layer.out_features + 1e-12
        assert layer.weight.abs().max() >= 1.0 / layer.out_features - 1e-6  # clipping was active


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_discriminator_step_clips(tiny_cfg, update):
    from neuralsde.training import build
    cfg = tiny_cfg([f"model.update={update}"])
    dm, model = build(cfg)
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.mul_(100.0)
    opt_g, opt_d = model.configure_optimizers()
    model.optimizers = lambda: (opt_g, opt_d)
    model.manual_backward = lambda loss: loss.backward()
    model.log = lambda *a, **k: None
    model.training_step(next(iter(dm.train_dataloader())), 0)
    layers = [m for m in model.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert layers
    for layer in layers:
        assert layer.weight.abs().max() <= 1.0 / layer.out_features + 1e-7
        assert layer.weight.abs().max() >= 1.0 / layer.out_features - 1e-7  # the 100x weights were clipped here


def test_gradient_penalty_is_differentiable_and_zero_for_unit_slope():
    # D(x) = slope * sum(x * w) with |w| = 1: the gradient norm is |slope| at every interpolate, so the penalty is
    # exactly (|slope| - 1)^2; it must be differentiable in D's parameters (the discriminator trains through it).
    real, fake = torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    w = torch.ones(5, 2) / 10 ** 0.5
    penalty = gradient_penalty(lambda x: (x * w).sum(dim=(1, 2)), real, fake)
    assert penalty.abs() < 1e-10
    for slope in (3.0, 0.5):
        steep = gradient_penalty(lambda x, s=slope: s * (x * w).sum(dim=(1, 2)), real, fake)
        assert steep.item() == pytest.approx((slope - 1) ** 2, rel=1e-5)
    scale = torch.tensor(2.0, requires_grad=True)  # a parameter of D: d/ds (s - 1)^2 = 2 (s - 1) = 2
    (grad,) = torch.autograd.grad(gradient_penalty(lambda x: scale * (x * w).sum(dim=(1, 2)), real, fake), scale)
    assert grad.item() == pytest.approx(2.0, rel=1e-5)
    # NaNs in the real paths (missing values) are filled from the fake ones: the penalty stays finite
    real[0, 1, 0] = float("nan")
    assert torch.isfinite(gradient_penalty(lambda x: 3.0 * (x * w).sum(dim=(1, 2)), real, fake))


def _alternating_run(tiny_cfg, overrides, old_path: bool, steps: int = 5):
    """Losses, weights and the RNG state after ``steps`` alternating steps (n_critic=2); ``old_path``: the
    discriminator steps' fakes solved with the generator's autograd graph, as before ``_critic_fakes``."""
    from neuralsde.training import build
    torch.manual_seed(0)
    dm, model = build(tiny_cfg(["model.update=alternating", "model.n_critic=2", *overrides]))
    if old_path:
        model._critic_fakes = lambda n: model.generator(model.times, n)
    grad_modes = []  # torch.is_grad_enabled() at each generator solve
    model.generator.register_forward_pre_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    opt_g, opt_d = model.configure_optimizers()
    model.optimizers = lambda: (opt_g, opt_d)
    model.manual_backward = lambda loss: loss.backward()
    logged = []
    model.log_step = lambda metrics, **k: logged.append({key: float(v) for key, v in metrics.items()})
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(1)
    for i in range(steps):
        model.training_step(batch, i)
    assert grad_modes == ([True] * 8 if old_path else [False, True, False, False, True, False, False, True])
    return logged, [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


@pytest.mark.parametrize("overrides", [
    ("solver.backend=fast", "solver.adjoint=true"),
    ("solver.backend=torchsde", "solver.adjoint=true"),
    ("solver.backend=fast", "model.lipschitz=gradient_penalty"),
    pytest.param(("solver.backend=fast", "solver.compile=default"), marks=pytest.mark.slow),  # compiles twice
], ids=["fast-adjoint", "torchsde-adjoint", "fast-gp", "fast-compiled"])
def test_alternating_critic_fakes_without_graph_train_identically(tiny_cfg, overrides):
    # model.update=alternating: the discriminator-only steps' fakes are solved under no_grad (nothing backpropagates
    # into the generator there); training must be bit-identical to solving them with the graph.
    new_logs, new_weights, new_rng = _alternating_run(tiny_cfg, overrides, old_path=False)
    old_logs, old_weights, old_rng = _alternating_run(tiny_cfg, overrides, old_path=True)
    assert new_logs == old_logs and any("train/g_loss" in step for step in new_logs)
    assert all(torch.equal(a, b) for a, b in zip(new_weights, old_weights, strict=True))
    assert torch.equal(new_rng, old_rng)
