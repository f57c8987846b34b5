"""sample.py's own options are refused with the option named before the checkpoint is read."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from neuralsde.commands import run_sample
from neuralsde.errors import ConfigError
from tests.conftest import ROOT


def sample_cfg(tmp_path, **values):
    cfg = OmegaConf.load(ROOT / "configs" / "sample.yaml")
    cfg.pop("defaults")
    cfg.paths = {"output_dir": str(tmp_path)}
    cfg.ckpt_path, cfg.out = str(tmp_path / "never_read.ckpt"), str(tmp_path / "s.csv")
    for key, value in values.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("values, needle", [
    ({"n": "abc"}, r"n='abc' must be a positive number of paths.*Fix: e.g. n=1000"),  # was int()'s ValueError
    ({"batch_size": 0}, r"batch_size=0 must be a positive batch size.*Fix"),  # was "range() arg 3 must not be zero"
    ({"seed": "x"}, r"seed='x' is not valid: expected an integer"),
    ({"out": "???"}, r"out is required and not set. Fix: pass out=samples.csv"),
])
def test_sample_options(tmp_path, values, needle):
    with pytest.raises(ConfigError, match=needle):
        run_sample(sample_cfg(tmp_path, **values))
