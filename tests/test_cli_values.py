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


@pytest.mark.parametrize("trainer, accelerator", [("trainer=ddp", "gpu"), ("trainer=gpu", "gpu"),
                                                  ("trainer.accelerator=cuda", "cuda")])  # Lightning's other name
def test_a_gpu_trainer_without_a_gpu_is_named_before_any_work(trainer, accelerator, tmp_path, monkeypatch):
    """``python train.py trainer=ddp`` on a laptop ended in Hydra's wrapper around Lightning's "No supported gpu
    backend found!", after the data were built; it names the option and the CPU alternatives first."""
    import torch

    import neuralsde.training as training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training, "_train", lambda cfg: pytest.fail("reached the training"))
    cfg = compose_config([trainer, f"paths.output_dir={tmp_path}"])
    refused = rf"trainer.accelerator={accelerator} .* no CUDA device.*Fix: trainer=ddp_sim"
    with pytest.raises(ConfigError, match=refused):
        training.train(cfg)
    monkeypatch.setattr(training, "_train", lambda cfg: "trained")
    assert training.train(compose_config(["trainer=ddp_sim", f"paths.output_dir={tmp_path}"])) == "trained"


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


@pytest.mark.parametrize("typo, refused", [
    ("+model.hiden_size=8", r"model.hiden_size is not an option of sdegan.module.SDEGAN \(it takes"),
    ("model.lipschitz=foo", r"model.lipschitz='foo' is not valid: expected one of \('clip', 'gradient_penalty'\)"),
    ("model.generator.hidden_size=-3", r"model.generator.hidden_size=-3 is not valid: expected a positive integer"),
    ("model.optimizer.name=foo", r"model.optimizer.name='foo' is not valid: expected one of \['adadelta'"),
])
def test_a_model_option_is_checked_before_the_data_are_downloaded(typo, refused, tmp_path, monkeypatch):
    """On a machine without the air quality data, a typo in a model option was reported only after the UCI zip had
    been downloaded (minutes), or not at all where the download failed (a DataError instead)."""
    import neuralsde.data.download as download
    from neuralsde.config_checks import check_job
    from neuralsde.training import train

    monkeypatch.setattr(download, "download_url", lambda *args, **kwargs: pytest.fail("the data were downloaded"))
    cfg = compose_config(["experiment=air_quality_sdegan", typo, f"paths.data_dir={tmp_path / 'empty'}",
                          f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=refused):
        train(cfg)
    with pytest.raises(ConfigError, match=refused):  # as a sweep checks every job before the first
        check_job(cfg)


def test_a_model_constructor_warning_is_shown_once(tmp_path):
    """Was: the stand-in model of the checks before the data warned too, so a run showed the discriminator's hermite
    warning twice (the warning filters set between the two builds reset Python's once-per-place record)."""
    import warnings

    from neuralsde.config_checks import check_job
    from neuralsde.training import build
    from tests.conftest import shrink

    cfg = shrink(compose_config(["model=sdegan", "model.discriminator.interpolation=hermite"]), tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_job(cfg)
        assert not caught  # the checks build a stand-in: nothing to say about it
        build(cfg)
    assert [str(w.message)[:47] for w in caught] == ["model.discriminator.interpolation=hermite gives"]


def test_a_word_where_a_number_belongs_is_named(tmp_path):
    """model.optimizer.g_lr=abc was "could not convert string to float: 'abc'" under Hydra's wrapper (full_key:
    model); data.source.n_paths=abc a TypeError, n_paths=256.5 torch.randn's signature dump."""
    from neuralsde.data.ou import OUSource
    from neuralsde.training import build

    tiny = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16", f"paths.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"model.optimizer.g_lr='abc' is not valid: expected a positive finite"):
        build(compose_config([*tiny, "model.optimizer.g_lr=abc"]))
    for value in ("abc", 256.5):
        with pytest.raises(ConfigError, match=rf"data.source.n_paths={value!r} is not valid: expected an integer"):
            OUSource(n_paths=value)


@pytest.mark.parametrize("overrides, hint", [
    (["model.generator.hiden_size=32"], "model.generator.hiden_size is not a key of this config. "
                                         "Fix: model.generator.hidden_size=32 (the nearest key"),
    (["solver.dtt=0.5"], "Fix: solver.dt=0.5 (the nearest key"),
    (["~solver.dtt"], "Fix: ~solver.dt (the nearest key"),
    (["solvr=midpoint"], "Fix: solver=midpoint (the nearest key"),  # a misspelt group is a misspelt key
    (["hydra/launcher=slurm", "hydra.launcher.partiton=gpu"], "Fix: hydra.launcher.partition=gpu"),
    (["experiment=ou_sdgan"], "experiment=ou_sdgan is not an option of the experiment group. "
                              "Fix: experiment=ou_sdegan"),
    (["hydra/launcher=slrm"], "Fix: hydra/launcher=slurm"),
    (["solver=reversible_heun,midpont", "seed=0,1"], "solver=midpont is not an option of the solver group"),
    # compared within model.generator, not on whole dotted names: no far-fetched guess, the section's keys instead
    (["model.generator.foo=3"], "Fix: use one that exists (model.generator has: field_mult, hidden_size, "
                                "initial_mult, initial_noise_size"),
    (["data.source.path=x"], "Fix: use one that exists (data.source has: _target_, drop_fraction"),
    # the same name one section deeper: too far for difflib, named in full
    (["experiment=air_quality_sdegan", "data.cache_dir=/x"], "data.cache_dir is not a key of this config. Fix: did "
                                                             "you mean data.source.cache_dir? Or use one that exists"),
    (["model.hidden_size=8"], "Fix: did you mean model.discriminator.hidden_size or model.generator.hidden_size? Or "
                              "use one that exists (model has: _target_, cuda_graph,"),
])
def test_misspelt_override_names_the_nearest_valid_one(overrides, hint):
    """Hydra's "Could not override 'solver.dtt'. To append to your config use +solver.dtt=0.5" named no valid key
    (and its advice adds a key nothing reads); experiment=ou_sdgan listed the options without naming the nearest."""
    from neuralsde.override_hints import override_hints

    (line,) = override_hints(overrides)
    assert hint in line


def test_valid_overrides_get_no_hint():
    from neuralsde.override_hints import override_hints

    assert override_hints(["solver=midpoint", "model.generator.hidden_size=8", "+model.foo=1", "hparams_search=null",
                           "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]) == []
    two = override_hints(["data=ou", "model.generator.hiden_size=32", "solver.dtt=0.5", "debug=fst"])
    assert [line.split()[0] for line in two] == ["debug=fst", "model.generator.hiden_size", "solver.dtt"]


def test_train_py_prints_the_hint_under_hydras_error():
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "solver.dtt=0.5"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1  # Hydra's own exit, its own message kept
    assert "Could not override 'solver.dtt'" in res.stderr
    assert res.stderr.rstrip().endswith("ConfigError: solver.dtt is not a key of this config. Fix: solver.dt=0.5 "
                                        "(the nearest key; a + in front would add a new key, not set this one)")


def test_a_run_shorter_than_swa_start_warns_that_nothing_is_averaged(tmp_path):
    """model.train_steps=1000 (a README example) under the laptop recipe's swa_start=1000: averaging updates at
    steps 0..999, so the run silently sampled, plotted and scored the last generator, not the average."""
    import warnings

    from neuralsde.training import build

    tiny = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16", f"paths.output_dir={tmp_path}"]
    with pytest.warns(UserWarning, match=r"model.swa_start=1000 is not below model.train_steps=1000: no weight "
                                         r"averaging.*Fix: set model.swa_start below model.train_steps, e.g. "
                                         r"model.swa_start=500"):
        build(compose_config([*tiny, "model.train_steps=1000"]))[1].on_fit_start()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="model.swa_start")
        build(compose_config(tiny))[1].on_fit_start()  # the default: 2,000 steps, averaging from 1,000


def test_a_missing_checkpoint_to_continue_is_found_before_any_work(tmp_path):
    """train.py ckpt_path=<typo> was found after the data were loaded, and in a sweep continuing several runs
    (-m ckpt_path=a,b) only when that job started."""
    from neuralsde.config_checks import check_job
    from neuralsde.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"Checkpoint '.*lst.ckpt' does not exist. Fix: pass the path"):
        check_job(compose_config([f"ckpt_path={tmp_path}/lst.ckpt"]))


def test_a_training_run_checks_its_model_options_once(tiny_cfg, monkeypatch):
    """train's check_job builds the stand-in model; build, called by train, built it a second time."""
    from neuralsde import training

    calls = []
    real = training.check_model
    monkeypatch.setattr(training, "check_model", lambda cfg: calls.append(1) or real(cfg))

    training.train(tiny_cfg(["test=false"], steps=1))
    assert len(calls) == 1
    training.build(tiny_cfg(["test=false"], steps=1))  # from Python: build checks them itself
    assert len(calls) == 2
