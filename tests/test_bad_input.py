"""Each bad input is refused before training with an error that names the option and the fix."""
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from neuralsde.errors import CheckpointError, ConfigError
from neuralsde.solver import SolverConfig
from neuralsde.training import build, train
from tests.conftest import compose_config


@pytest.mark.parametrize("kwargs,needle", [
    (dict(method="rk4"), "solver.method='rk4'"),
    (dict(brownian="levy"), "solver.brownian='levy'"),
    (dict(method="reversible_heun", adjoint_method="midpoint"), "adjoint_reversible_heun"),
    (dict(dt=0.0), "solver.dt=0.0"),
    (dict(backend="jax"), "solver.backend='jax'"),
    (dict(backend="fast", brownian="tree"), "solver.backend=torchsde"),
    (dict(backend="fast", method="euler_heun"), "solver.backend='fast'"),
])
def test_solver_options(kwargs, needle):
    with pytest.raises(ConfigError, match="Fix") as err:
        SolverConfig(**kwargs)
    assert needle in str(err.value)


def test_dt_not_dividing_gaps_is_an_error():
    with pytest.raises(ConfigError, match="does not divide"):
        SolverConfig(dt=0.3).check_grid(torch.arange(8.0))
    with pytest.raises(ConfigError, match="does not divide"):
        SolverConfig(dt=0.1).check_grid(torch.linspace(0, 1, 11))
    SolverConfig(dt=0.25).check_grid(torch.arange(8.0))


@pytest.mark.parametrize("override,needle", [
    ("solver.dt=0.3", "does not divide"),
    ("model.generator.hidden_size=0", "model.generator.hidden_size=0"),
    ("model.discriminator.mlp_size=-3", "model.discriminator.mlp_size=-3"),
    ("model.optimizer.g_lr=0", "model.optimizer.g_lr"),
    ("model.generator.initial_scale=0", "model.generator.initial_scale=0"),
    ("model.generator.field_mult=0", "model.generator.field_mult=0"),
    ("model.generator.initial_mult=-3", "model.generator.initial_mult=-3"),
    ("model.generator.time_input=seconds", "model.generator.time_input='seconds'"),
    ("model.discriminator.time_input=1", "model.discriminator.time_input=1"),
    ("model.optimizer.d_lr=-1e-3", "model.optimizer.d_lr"),
    ("model.optimizer.g_lr=inf", "model.optimizer.g_lr=inf is not valid: expected a positive finite number"),
    ("model.optimizer.d_lr=nan", "model.optimizer.d_lr=nan is not valid: expected a positive finite number"),
    ("model.generator.initial_scale=inf", "model.generator.initial_scale=inf is not valid"),
    ("model.gp_lambda=inf", "model.gp_lambda=inf is not valid: expected a finite number >= 0"),
    ("model.lipschitz=spectral", "model.lipschitz='spectral'"),
    ("model.discriminator.interpolation=cubic", "model.discriminator.interpolation='cubic'"),
    ("model.update=sequential", "model.update='sequential'"),
    ("data.split_fractions=[0.5,0.6,0.1]", "data.split_fractions"),
])
def test_bad_config_values(tiny_cfg, override, needle):
    cfg = tiny_cfg([override])
    with pytest.raises(ValueError) as err:
        build(cfg)
    assert needle in str(err.value) and "Fix" in str(err.value)


@pytest.mark.parametrize("value", ["2.5", "-1", "true"])
def test_swa_start_is_a_step_number(value):
    """Was: 2.5 truncated to step 2 and true read as step 1, without a word (the test config sets swa_start itself,
    so this one is checked on the composed config alone, as train.py does before the data)."""
    from neuralsde.training import check_model

    with pytest.raises(ConfigError, match=rf"model.swa_start={value.replace('true', 'True')} is not valid: expected "
                                          r"an integer of at least 0\. Fix: e\.g\. model\.swa_start=250"):
        check_model(compose_config([f"model.swa_start={value}"]))


def test_non_positive_train_steps(tiny_cfg):
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.model.train_steps = 0
    with pytest.raises(ConfigError, match="model.train_steps=0 is not valid: expected a positive integer. Fix"):
        build(cfg)


def test_non_integer_seed(tiny_cfg):
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.seed = "abc"
    with pytest.raises(ConfigError, match="seed='abc' is not valid: expected an integer. Fix: e.g. seed=0"):
        train(cfg)


def test_the_command_line_prints_our_errors_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "seed=abc", f"hydra.run.dir={tmp_path}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    assert "ConfigError: seed='abc' is not valid: expected an integer. Fix: e.g. seed=0" in out
    assert "Traceback" not in out
    # The same run directory again: Hydra's record of the first command (.hydra/) is kept beside the second's
    again = subprocess.run([sys.executable, str(ROOT / "train.py"), "seed=xyz", f"hydra.run.dir={tmp_path}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, (again.stdout + again.stderr)[-2000:]
    assert "seed=xyz" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    earlier = list(tmp_path.glob(".hydra_before_*/overrides.yaml"))
    assert len(earlier) == 1 and "seed=abc" in earlier[0].read_text()


def test_a_run_directory_or_folder_given_for_a_file(tmp_path):
    from neuralsde.checkpoints import read_checkpoint
    from neuralsde.commands import check_output

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a directory. Fix: pass a .ckpt file, e.g. .*run/checkpoints/last"):
        read_checkpoint(tmp_path / "run")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ConfigError, match="out=.*d.csv' is a directory. Fix: name a file"):
        check_output(str(tmp_path / "d.csv"), overwrite=True)


@pytest.mark.parametrize("key, value, needle", [
    ("data.batch_size", 10_000, r"data.batch_size=10000 is larger than the training set \(51 series\)"),
    # Lightning counts optimiser steps (two per SDE-GAN step) and would skip the final validation
    ("trainer.max_steps", 30, r"trainer.max_steps=30 .* Fix: set model.train_steps=30"),
])
def test_run_settings_refused_by_train(tiny_cfg, key, value, needle):
    cfg = tiny_cfg()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=needle):
        train(cfg)


def test_hydra_errors_for_unknown_group_option_and_key_are_kept():
    with pytest.raises(ConfigCompositionException, match="solver"):
        compose_config(["solver=rk4"])
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose_config(["model.not_a_key=1"])


def test_the_config_is_printed_after_the_checks(tiny_cfg, caplog):
    # A bad value's one-line error came after ~140 lines of printed config: the dump now follows the build.
    from neuralsde.training import train

    cfg = tiny_cfg(["model.optimizer.g_lr=-1"])
    with open_dict(cfg):
        cfg.extras.print_config = True
    with caplog.at_level("INFO"), pytest.raises(ConfigError, match="g_lr"):
        train(cfg)
    assert not any("Resolved config" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.extras.print_config = True
        cfg.test = False
    with caplog.at_level("INFO"):
        train(cfg)
    assert sum("Resolved config" in r.getMessage() for r in caplog.records) == 1
