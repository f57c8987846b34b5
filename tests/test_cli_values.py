"""Command-line values that used to end in a raw OmegaConf/TypeError traceback or were silently ignored."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf, open_dict

from neuralsde.config_checks import check_required, check_trainer_limits
from neuralsde.errors import ConfigError
from neuralsde.solver import SolverConfig
from tests.conftest import ROOT, compose_config


def test_missing_required_value_is_one_line_naming_the_option():
    with pytest.raises(ConfigError, match=r"data.source.path is required.*Fix: pass data.source.path=/abs/path"):
        check_required(compose_config(["data=csv"]))
    with pytest.raises(ConfigError, match=r"ckpt_path is required.*Fix: pass ckpt_path="):
        check_required(compose_config(config_name="eval"))
    check_required(compose_config(["data=csv", "data.source.path=/x.csv"]))


def test_data_csv_without_path_on_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=csv", f"hydra.run.dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "MissingMandatoryValue" not in res.stdout + res.stderr
    assert "ConfigError: data.source.path is required" in res.stdout + res.stderr


@pytest.mark.parametrize("options, needle", [
    ({"dt": "abc"}, r"solver.dt='abc' is not valid: expected a positive number"),
    ({"dt": True}, r"solver.dt=True is not valid"),
    ({"adjoint": "abc"}, r"solver.adjoint='abc' is not valid: expected true or false"),
])
def test_solver_values_of_the_wrong_type(options, needle):
    with pytest.raises(ConfigError, match=needle):
        SolverConfig(**options)


def test_max_epochs_is_refused_not_ignored():
    cfg = compose_config(["trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match=r"trainer.max_epochs=1 has no effect.*Fix: .*model.train_steps"):
        check_trainer_limits(cfg)
    with open_dict(cfg):
        OmegaConf.update(cfg, "trainer.max_epochs", -1)
    check_trainer_limits(cfg)


def test_eval_batch_size_is_checked_before_training():
    """data.eval_batch_size=0 reached torch's DataLoader at the first validation, after the training steps."""
    from neuralsde.data.datamodule import TimeSeriesDataModule

    for key, value in (("eval_batch_size", 0), ("eval_batch_size", 2.5), ("batch_size", "abc")):
        with pytest.raises(ConfigError, match=rf"data.{key}={value!r} is not valid: expected a positive integer"):
            TimeSeriesDataModule(source=None, **{key: value})


def test_key_added_with_plus_that_the_model_does_not_take(tmp_path):
    """Hydra's advice for a mistyped key (+model.train_step=5) ended in SDEGAN's 'unexpected keyword argument'
    TypeError under an InstantiationException."""
    from neuralsde.training import build

    tiny = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16", f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"model.train_step is not an option of sdegan.module.SDEGAN.*"
                                          r"Fix: set model.train_steps=\.\.\. .* instead of \+model.train_step"):
        build(compose_config([*tiny, "+model.train_step=5"]))
    with pytest.raises(ConfigError, match=r"Generator got an unknown option 'hidden_sze' from the 'model' section"):
        build(compose_config([*tiny, "+model.generator.hidden_sze=5"]))


def test_a_word_where_a_number_belongs_is_named(tmp_path):
    """model.optimizer.g_lr=abc was "could not convert string to float: 'abc'" under Hydra's wrapper (full_key:
    model); data.source.n_paths=abc a TypeError, n_paths=256.5 torch.randn's signature dump."""
    from neuralsde.data.ou import OUSource
    from neuralsde.training import build

    tiny = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16", f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"model.optimizer.g_lr='abc' is not valid: expected a number"):
        build(compose_config([*tiny, "model.optimizer.g_lr=abc"]))
    for value in ("abc", 256.5):
        with pytest.raises(ConfigError, match=rf"data.source.n_paths={value!r} is not valid: expected an integer"):
            OUSource(n_paths=value)
