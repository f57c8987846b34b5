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
