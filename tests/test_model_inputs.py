"""Paths handed to a model from Python: the wrong layout, grid or dtype is named, not read silently."""
from __future__ import annotations

import pytest
import torch

from neuralsde.errors import DataError
from neuralsde.training import build
from tests.conftest import compose_config


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
    assert model.double().reconstruct(x.double()).dtype == torch.float64
