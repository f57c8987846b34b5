"""The Python route of the README: compose a config, build the model, sample; wrong inputs named, not read."""
from __future__ import annotations

import math

import pytest
import torch

from neuralsde.errors import ConfigError, DataError
from neuralsde.training import build
from tests.conftest import compose_config

TINY = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16"]


def test_build_outside_hydra_names_the_fix():
    """Was: InterpolationResolutionError "HydraConfig was not set" (callbacks.model_checkpoint.dirpath) after
    the data had been loaded."""
    with pytest.raises(ConfigError, match=r"paths.output_dir.*Fix: .*'paths.output_dir=/tmp/run'"):
        build(compose_config(TINY))


def test_build_with_output_dir_samples(tmp_path):
    _, model = build(compose_config([*TINY, f"paths.output_dir={tmp_path}"]))
    assert model.sample(3).shape == (3, 8, 2)




@pytest.mark.parametrize("experiment", ["ou_sdegan", "ou_latent_sde"])
def test_sample_keeps_no_graph_and_names_bad_n(tmp_path, experiment):
    _, model = build(compose_config([f"experiment={experiment}", *TINY, f"paths.output_dir={tmp_path}"]))
    paths = model.sample(4)
    # was True: the solve's graph was kept, and the metrics warned "Consider using tensor.detach() first"
    assert paths.shape == (4, 8, 2) and not paths.requires_grad
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match=r"n=.* is not valid: expected a positive integer"):
            model.sample(bad)
    with pytest.raises(ConfigError, match="n=0"):
        model.sample_data_units(0)


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    tiny = ["experiment=ou_latent_sde", "data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16",
            f"paths.output_dir={tmp_path_factory.mktemp('run')}"]
    return build(compose_config(tiny))


def test_reconstruct_and_elbo_refuse_wrong_inputs(latent):
    dm, model = latent
    x = dm.test[:6]  # (6, 8, 2)
    assert model.reconstruct(x).shape == x.shape
    with pytest.raises(DataError, match=r"looks like \(T, batch, 1 \+ C\): Fix: pass paths.transpose\(0, 1\)"):
        model.reconstruct(x.transpose(0, 1))  # was a (8, 8, 2) "reconstruction" of 8 paths
    with pytest.raises(DataError, match=r"shape \(6, 5, 2\): expected \(batch, 8, 2\).*8 training times"):
        model.reconstruct(x[:, :5])  # was answered on all 8 times
    with pytest.raises(DataError, match=r"paths are torch.float64 but the model is torch.float32. Fix"):
        model.reconstruct(x.double())
    with pytest.raises(DataError, match=r"expected \(batch, 8, 2\)"):
        model.elbo_terms(x[..., 1], dm.filled["test"][:6])
    log_lik, kl, zs = model.elbo_terms(x, dm.filled["test"][:6])
    assert log_lik.shape == kl.shape == (6,)
    try:
        assert model.double().reconstruct(x.double()).dtype == torch.float64
    finally:
        model.float()  # the module-scoped model is shared with the next test


def test_the_readmes_latent_lines(latent):
    dm, model = latent
    assert model.reconstruct(dm.test[:8]).shape == dm.test[:8].shape
    scores = model.split_elbo(dm.test_dataloader())
    assert set(scores) == {"elbo", "log_lik", "kl"} and all(math.isfinite(v) for v in scores.values())
    assert model.split_elbo(dm.test_dataloader()) == scores  # seeded as the test stage (whose figure it equals:
    # tests/test_commands.py), not drawn from the global RNG


def test_discriminator_refuses_wrong_inputs():
    from sdegan.components.discriminator import Discriminator

    disc = Discriminator(2, 8, 8, t_size=10)
    paths = torch.randn(4, 10, 3)
    assert disc(paths).shape == (4,)
    with pytest.raises(DataError, match=r"looks like \(T, batch, 1 \+ C\): pass paths.transpose\(0, 1\)"):
        disc(paths.transpose(0, 1))  # was scored as 10 paths
    with pytest.raises(DataError, match=r"shape \(4, 6, 3\): expected \(batch, 10, 3\)"):
        disc(paths[:, :6])  # was read on the wrong time scale
    with pytest.raises(DataError, match=r"paths are torch.float64 but the discriminator is torch.float32. Fix"):
        disc(paths.double())
