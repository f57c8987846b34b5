"""The Python route of the README: compose a config, build the model, sample; load a checkpoint's model."""
from __future__ import annotations

import pytest

from neuralsde.errors import ConfigError
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
