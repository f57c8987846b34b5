"""What a training job returns to its sweeper (neuralsde/sweeps.py), and how a failed sweep job is reported
(neuralsde.hydra_callbacks.ReportFailedJob)."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
from contextlib import contextmanager

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict

from neuralsde import sweeps
from neuralsde.errors import ConfigError, TrainingDivergedError
from neuralsde.hydra_callbacks import ReportFailedJob
from neuralsde.sweeps import metric_for_sweep, sweep_direction, train_for_sweep
from tests.conftest import CONFIG_DIR, ROOT
from tests.test_sweeps import ENV, TINY

DIVERGED = TrainingDivergedError("train/d_loss is nan at training step 1")


def job_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@contextmanager
def in_job(*overrides: str):
    """Inside a Hydra job of the config composed with ``overrides`` (as ``HydraConfig.get()`` then sees it)."""
    cfg = job_config(*overrides)
    HydraConfig.instance().set_config(cfg)
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


def test_only_a_sweeper_that_reads_the_value_has_a_direction():
    assert sweep_direction() is None  # no Hydra job
    with in_job():
        assert sweep_direction() is None  # a single run
    with in_job("hydra.mode=MULTIRUN"):
        assert sweep_direction() is None  # Hydra's basic sweeper ignores what a job returns
    with in_job("hparams_search=ou_optuna"):
        assert sweep_direction() == "minimize"
    with in_job("hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "hydra.mode=MULTIRUN"):
        assert sweep_direction() == "maximize"


def test_a_missing_metric_fails_only_a_job_whose_sweeper_reads_it(caplog):
    metrics = {"train/g_loss": 1.0, "val/sig_mmd": 0.5}
    assert metric_for_sweep(metrics, "val/sig_mmd", "minimize") == 0.5
    with pytest.raises(ConfigError, match=r"optimized_metric='val/elbo' was not logged.*'val/sig_mmd'.*Fix"):
        metric_for_sweep(metrics, "val/elbo", "minimize")
    with caplog.at_level("WARNING"):
        assert metric_for_sweep(metrics, "val/elbo", None) is None
    assert "val/elbo" in caplog.text and "limit_val_batches" in caplog.text
    # was: every job of `python train.py -m seed=0,1 trainer.limit_val_batches=0` trained, saved, and then failed
    with in_job("hydra.mode=MULTIRUN"):
        assert metric_for_sweep(metrics, "val/elbo") is None


@pytest.mark.parametrize("value, direction, reported", [
    (math.nan, "minimize", math.inf),   # optuna refuses NaN: the Optuna sweeper stopped the study on its own error
    (-math.inf, "minimize", math.inf),  # was: a broken trial became the best of a minimisation
    (math.nan, "maximize", -math.inf),
    (math.inf, "maximize", -math.inf),
    (math.inf, "minimize", math.inf),
])
def test_a_non_finite_metric_is_the_worst_value_for_the_direction(value, direction, reported, caplog):
    with caplog.at_level("WARNING"):
        assert metric_for_sweep({"val/sig_mmd": value}, "val/sig_mmd", direction) == reported
    assert "not finite" in caplog.text and f"direction={direction}" in caplog.text
    # a single run or a -m grid returns what was logged
    assert math.isnan(metric_for_sweep({"m": math.nan}, "m", None))


def test_a_diverged_trial_reports_the_worst_value_and_a_diverged_grid_job_fails(monkeypatch, caplog):
    from neuralsde import training

    def diverges(cfg):
        raise DIVERGED

    monkeypatch.setattr(training, "train", diverges)
    with in_job("hparams_search=ou_optuna") as cfg, caplog.at_level("WARNING"):
        assert train_for_sweep(cfg) == math.inf
    assert "Training diverged" in caplog.text and "val/sig_mmd_biased=inf" in caplog.text
    for overrides in ((), ("hydra.mode=MULTIRUN",)):
        with in_job(*overrides) as cfg, pytest.raises(TrainingDivergedError):
            train_for_sweep(cfg)
    monkeypatch.setattr(sweeps, "sweep_direction", lambda: "minimize")
    with in_job("hparams_search=ou_optuna") as cfg, open_dict(cfg):
        cfg.optimized_metric = None  # nothing to report: the job failed
        with pytest.raises(TrainingDivergedError):
            train_for_sweep(cfg)


def _job_end(cfg, error: Exception | None, num: int = 3):
    with open_dict(cfg):
        cfg.hydra.job.num = num
        cfg.hydra.runtime.output_dir = f"/sweep/{num}"
    ret = JobReturn(overrides=["seed=1", "model.generator.hidden_size=-3"])
    ret.status, ret.return_value = (JobStatus.FAILED, error) if error else (JobStatus.COMPLETED, 0.5)
    ReportFailedJob().on_job_end(cfg, ret)


def test_a_failed_sweep_job_logs_its_number_overrides_and_error(caplog):
    """Was: a sweep went on past a failed job and at its end named the first failure alone; the failed job's own
    train.log did not hold its error."""
    cfg = job_config("hydra.mode=MULTIRUN")
    with caplog.at_level(logging.ERROR, logger="neuralsde.hydra_callbacks"):
        _job_end(cfg, ConfigError("model.generator.hidden_size=-3 is not valid. Fix: e.g. 16"))
        _job_end(cfg, None, num=4)
    (record,) = caplog.records
    assert record.getMessage() == ("Sweep job 3 (seed=1 model.generator.hidden_size=-3) failed: ConfigError: "
                                   "model.generator.hidden_size=-3 is not valid. Fix: e.g. 16 (its directory: "
                                   "/sweep/3)")
    assert record.exc_info is None  # our errors name the fix: no traceback
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="neuralsde.hydra_callbacks"):
        _job_end(cfg, RuntimeError("boom"))
        _job_end(job_config(), RuntimeError("a single run reports its own error"))
    (record,) = caplog.records
    assert "failed: RuntimeError: boom" in record.getMessage() and record.exc_info[0] is RuntimeError


def test_a_sweep_names_every_failed_job_in_the_terminal_and_its_log(tmp_path):
    # solver.dt=0.3 fails inside the job (it is checked against the data's time grid); a bad model option would be
    # refused for the whole sweep before its first job
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "seed=0,1",
                           "solver.dt=0.3", *TINY, "test=false", f"hydra.sweep.dir={tmp_path}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    for num, seed in ((0, 0), (1, 1)):
        line = f"Sweep job {num} (seed={seed} solver.dt=0.3"
        assert line in proc.stdout + proc.stderr
        assert line in (tmp_path / str(num) / "train.log").read_text()


@pytest.mark.slow
def test_an_optuna_study_goes_on_past_a_diverged_trial(tmp_path):
    """Was: the first trial whose loss became NaN stopped hparams_search=ou_optuna (max_failure_rate: 0.0), and
    no optimization_results.yaml was written."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "hparams_search=ou_optuna",
                           "hydra.sweeper.n_trials=4", "model.optimizer.g_lr=choice(0.01,1e30)",
                           "model.generator.hidden_size=16", *TINY, "test=false", f"hydra.sweep.dir={tmp_path}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training diverged" in proc.stdout + proc.stderr
    assert "setup plugin alembic" not in proc.stdout + proc.stderr  # optuna's storage imports it: its INFO lines
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.optimizer.g_lr"] == 0.01 and math.isfinite(best["best_value"])
