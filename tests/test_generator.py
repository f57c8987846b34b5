"""The SDE-GAN generator's initialisation options."""
from __future__ import annotations

import pytest
import torch

from neuralsde.errors import DataError
from neuralsde.solver import SolverConfig
from sdegan.components.generator import Generator


def _t0_spread(scale: float) -> torch.Tensor:
    torch.manual_seed(0)
    gen = Generator(data_size=3, initial_noise_size=4, hidden_size=8, mlp_size=8, t_size=5, initial_scale=scale,
                    solver=SolverConfig(backend="fast"))
    with torch.no_grad():
        paths = gen(torch.arange(5.0), 512, generator=torch.Generator().manual_seed(1))
    return gen, paths[:, 0, 1:].std(0)


def test_initial_scale_widens_the_initial_distribution_by_its_factor():
    """The initial network's last layer is scaled, so the spread of the generated value at t = 0 grows by exactly the
    factor (the readout is affine); the default leaves PyTorch's initialisation untouched."""
    base, spread = _t0_spread(1.0)
    wide, wide_spread = _t0_spread(30.0)
    torch.testing.assert_close(wide_spread, 30 * spread, rtol=1e-4, atol=0)
    torch.manual_seed(0)
    plain = Generator(data_size=3, initial_noise_size=4, hidden_size=8, mlp_size=8, t_size=5)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), plain.state_dict().values(), strict=True))
    assert torch.equal(wide.initial[0].weight, plain.initial[0].weight)  # only the last layer changes
    assert spread.max() < 0.2  # why the option exists: y0 starts near a point (0.02-0.04 at air quality's sizes)


def _paper_and_plain(**mults):
    sizes = dict(data_size=1, initial_noise_size=5, hidden_size=16, mlp_size=16, t_size=64)
    torch.manual_seed(0)
    plain = Generator(**sizes)
    torch.manual_seed(0)
    return Generator(**sizes, **mults), plain


def test_initial_and_field_mults_scale_every_parameter_of_their_networks_as_the_papers_code():
    """torchsde's examples/sde_gan.py (the paper's OU recipe) multiplies every parameter of the initial network by 3
    and every drift and diffusion parameter by 0.5; the readout is untouched."""
    paper, plain = _paper_and_plain(initial_mult=3.0, field_mult=0.5)
    for name, value in paper.state_dict().items():
        factor = 3.0 if name.startswith("initial.") else 0.5 if name.startswith("sde.") else 1.0
        torch.testing.assert_close(value, factor * plain.state_dict()[name], rtol=0, atol=0, msg=name)
    assert sum(name.startswith("initial.") for name in paper.state_dict()) == 4  # both layers, weights and biases
    # What it is for: an untrained t = 0 law about as wide as data normalised at t = 0 (std 1), not ten times narrower.
    with torch.no_grad():
        spreads = [g(torch.arange(64.0), 1024, generator=torch.Generator().manual_seed(1))[:, 0, 1].std()
                   for g in (paper, plain)]
    assert 0.5 < spreads[0] < 2 and spreads[1] < 0.2


@pytest.mark.parametrize("time_input,seen", [("unit", 5 / 7), ("index", 5.0)])
def test_vector_fields_read_the_index_time_rescaled_or_as_it_is(time_input, seen):
    """time_input=index (experiment=ou_sdegan_paper): drift, diffusion and the critic's field read t = 0..T-1 as the
    paper's code does; unit (the default) reads t / (T - 1)."""
    from sdegan.components.discriminator import Discriminator

    gen = Generator(data_size=1, hidden_size=4, mlp_size=4, t_size=8, time_input=time_input)
    disc = Discriminator(1, hidden_size=4, mlp_size=4, t_size=8, time_input=time_input)
    y, t = torch.randn(3, 4), torch.tensor(5.0)
    with torch.no_grad():
        drift, diffusion = gen.sde.f_and_g(t, y)
        ty = torch.cat([torch.full((3, 1), seen), y], dim=1)
        torch.testing.assert_close(drift, gen.sde.drift_net(ty))
        torch.testing.assert_close(diffusion, gen.sde.diffusion_net(ty).view(3, 4, 3))
        torch.testing.assert_close(disc.func(t, y), disc.func.net(ty).view(3, 4, 2))


def test_generator_refuses_time_values_that_are_not_one_dimensional():
    gen = Generator(1, t_size=8)
    assert gen(torch.arange(8.0), 3).shape == (3, 8, 2)
    for bad in (torch.arange(16.0).view(4, 4), torch.arange(8.0).view(8, 1), torch.zeros(1)):
        with pytest.raises(DataError, match=r"time_values has shape .*expected a 1-D tensor \(T,\)"):
            gen(bad, 3)
