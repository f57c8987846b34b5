"""SLURM preemption and time limits: the requeue notice stops training at a step's end, last.ckpt is written, the job
is requeued, and the requeued job (the same command, resume=auto) continues exactly."""
import os
import signal
import sys

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from neuralsde import requeue
from neuralsde.checkpoints import read_checkpoint
from neuralsde.resume import refuse_used_run_dir, resolve_ckpt_path
from tests.conftest import ROOT, compose_config, shrink
from tests.test_interrupts import SIGNALS, K, _with_callback, run_in_own_session
from tests.test_resume import _run, assert_same_training_state

# What srun sets for a one-task job step: Lightning then detects SLURM and turns its auto-requeue on.
SLURM_STEP = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1"}


def _slurm_job(tmp_path, stop: str, run_dir, restarts: int = 0):
    """The single-job recipe of the README, ``hydra.run.dir=D resume=auto resume_dir=D``, run as a SLURM job step
    at tiny sizes; ``stop``: the signal sent after training step K (``none``: none). ``scontrol`` on PATH records
    its arguments in ``tmp_path/scontrol.log``. Returns the finished process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    cmd = [sys.executable, "train.py", "data.source.n_paths=64", "data.source.t_size=16", "data.batch_size=16",
           f"model.train_steps={2 * K}", "test=false", "trainer.accelerator=cpu", "trainer.val_check_interval=1000",
           "trainer.log_every_n_steps=1", "callbacks.progress_bar=null", "callbacks.metrics=null",
           "callbacks.sample_plot=null", "extras.print_config=false",
           "+callbacks.stop._target_=tests.test_interrupts.Interrupt", f"+callbacks.stop.how={stop}",
           f"hydra.run.dir={run_dir}", "resume=auto", f"resume_dir={run_dir}"]
    env = {**os.environ, **SLURM_STEP, "SLURM_RESTART_COUNT": str(restarts), "PYTHONPATH": str(ROOT),
           "WANDB_MODE": "offline", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return run_in_own_session(cmd, env)


def _losses(run_dir):
    return pd.read_csv(run_dir / "csv" / "metrics.csv").dropna(subset=["train/d_loss"])


@pytest.mark.slow  # three train.py processes: about 40 s on two shared cores
def test_a_requeued_slurm_job_continues_from_the_step_it_was_stopped_at(tmp_path):
    # The command line as a SLURM job runs it: Hydra, the exit status, scontrol, and the same command rerun.
    run_dir = tmp_path / "job"
    stopped = _slurm_job(tmp_path, "sigusr1", run_dir)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stdout[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == K
    assert f"Interrupted (SIGUSR1, SLURM requeue) after training step {K} of {2 * K}: saved {last}" in stopped.stdout
    assert "Requeued SLURM job 4242; started again in this run directory, it continues" in stopped.stdout

    requeued = _slurm_job(tmp_path, "sigusr1", run_dir, restarts=1)  # the same command, as SLURM reruns it
    assert requeued.returncode == 0, requeued.stdout[-3000:]
    assert f"resume=auto: continuing from {last}" in requeued.stdout
    full = _slurm_job(tmp_path, "none", tmp_path / "full")
    assert full.returncode == 0, full.stdout[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # requeued once, by the first run

    resumed, uninterrupted = _losses(run_dir), _losses(tmp_path / "full")
    assert resumed["step"].tolist() == list(range(K, 2 * K))  # neither re-run nor skipped
    assert resumed["train/d_loss"].tolist() == uninterrupted["train/d_loss"].tolist()[K:]
    before = pd.read_csv(next(run_dir.glob("csv/metrics_before_*.csv"))).dropna(subset=["train/d_loss"])
    assert before["step"].tolist() == list(range(K))  # the first run's metrics, kept beside it
    assert_same_training_state(torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False),
                               torch.load(last, weights_only=False))


class _Launcher:
    """Stands for hydra-submitit-launcher's launcher: what submitit calls ``checkpoint`` on to requeue a job."""

    def __call__(self):
        return None

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _submitit_handler(tmp_path, requeued: list):
    """submitit's own SIGUSR2 handler of a SLURM job, its ``scontrol requeue`` recorded in ``requeued``."""
    from types import SimpleNamespace

    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    delayed = DelayedSubmission(_Launcher())
    delayed.set_timeout(60, 0)  # max_num_timeout: 0; a preemption is requeued all the same
    env = SimpleNamespace(global_rank=0, _requeue=requeued.append)
    return SignalHandler(env, JobPaths(tmp_path / "submitit", job_id="4242"), delayed)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"), "full", 2 * K)


@pytest.mark.parametrize("how", ["sigusr1", "sigusr2"])
def test_a_requeue_notice_saves_the_step_and_the_requeued_job_continues_exactly(tmp_path, monkeypatch, uninterrupted,
                                                                               how):
    # sigusr1: Lightning's SLURM auto-requeue wrote hpc_ckpt_1.ckpt into the run directory from inside its handler,
    # where resume=auto did not look, and training ran on. sigusr2: submitit (hydra/launcher=slurm) requeued and
    # exited (sys.exit) inside its handler, wherever the step was: Lightning took the SystemExit for a crash, no
    # checkpoint was written, and the requeued job lost every step since the last periodic one.
    from tests.test_interrupts import Interrupt

    requeued = []
    if how == "sigusr1":  # a job step started by srun, scontrol recording its arguments
        for key, value in SLURM_STEP.items():
            monkeypatch.setenv(key, value)
        scontrol = tmp_path / "bin" / "scontrol"
        scontrol.parent.mkdir()
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
        scontrol.chmod(0o755)
        monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "submitit").mkdir()
    before = signal.getsignal(signal.SIGUSR2)
    if how == "sigusr2":
        signal.signal(signal.SIGUSR2, _submitit_handler(tmp_path, requeued).checkpoint_and_try_requeue)
    _with_callback(monkeypatch, Interrupt(how))
    try:
        with pytest.raises(SystemExit) as stop:
            _run(tmp_path, "job", 2 * K)
    finally:
        launcher_handler = signal.signal(signal.SIGUSR2, before)
    monkeypatch.undo()
    assert stop.value.code == 128 + SIGNALS[how]
    if how == "sigusr1":
        assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
        assert not list((tmp_path / "job").glob("hpc_ckpt_*"))
    else:
        assert requeued == [0]  # once, after the save (a preemption: max_num_timeout=0 does not stop it)
        assert (tmp_path / "submitit" / "4242_submitted.pkl").is_file()  # what the requeued job runs
        assert getattr(launcher_handler, "__name__", "") == "checkpoint_and_try_requeue"  # put back after training
    last = tmp_path / "job" / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == K

    # the requeued job: resume=auto, or (a sweep's job as the user wrote it) SLURM's restart count alone
    if how == "sigusr2":
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed_log, resumed = _run(tmp_path, "job", 2 * K, overrides=["resume=auto"] if how == "sigusr1" else [])
    full_log, full = uninterrupted
    resumed_losses, full_losses = (log.dropna(subset=["train/d_loss"]) for log in (resumed_log, full_log))
    assert resumed_losses["step"].tolist() == list(range(K, 2 * K))  # neither re-run nor skipped
    assert resumed_losses["train/d_loss"].tolist() == full_losses["train/d_loss"].tolist()[K:]
    assert_same_training_state(full, resumed)


def test_resume_auto_and_the_run_dir_check_see_lightnings_hpc_checkpoints(tmp_path):
    # With the interrupt callback off, Lightning's auto-requeue writes hpc_ckpt_N.ckpt into the run directory: a
    # requeued job with resume=auto started afresh beside it, and Lightning then loaded it unchecked.
    cfg = shrink(compose_config([]), tmp_path, steps=2)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"")
    with open_dict(cfg):
        cfg.resume, cfg.resume_dir = "auto", str(tmp_path)
    assert resolve_ckpt_path(cfg) == str(hpc)
    from neuralsde.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run with checkpoints"):
        refuse_used_run_dir(tmp_path, None)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_requeued_job_without_its_checkpoints_starts_afresh_and_says_why(tmp_path, monkeypatch, caplog, rank):
    # rank 1: Lightning's second DDP process, which said it too (as resume=auto did before rank 0 alone said it)
    from pytorch_lightning.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cfg = shrink(compose_config([]), tmp_path / "new", steps=2)
    with caplog.at_level("WARNING", logger="neuralsde.resume"):
        assert resolve_ckpt_path(cfg) is None
    said = "SLURM requeued this job but its run directory" in caplog.text and "hydra.run.dir=" in caplog.text
    assert said is (rank == 0)
    last = tmp_path / "new" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    with caplog.at_level("INFO", logger="neuralsde.resume"):
        assert resolve_ckpt_path(cfg) == str(last)  # its own, once it has one
    assert (f"SLURM requeued this job (SLURM_RESTART_COUNT=2): continuing from its own {last}" in caplog.text) is (
        rank == 0)
    with open_dict(cfg):
        cfg.resume = "none"  # said outright: never a checkpoint
    assert resolve_ckpt_path(cfg) is None


def test_a_requeued_single_job_in_its_fixed_run_dir_is_not_refused(tmp_path, monkeypatch):
    # Hydra's check before the job: SLURM reruns the command as it was, resume unset, in a directory it has used
    from omegaconf import OmegaConf

    from neuralsde.hydra_callbacks import RefuseUsedRunDir

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}}, "resume": None, "ckpt_path": None})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)  # not requeued yet
    with pytest.raises(SystemExit) as stop:
        RefuseUsedRunDir().on_run_start(cfg)  # another command given a used directory
    assert stop.value.code == 2
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    RefuseUsedRunDir().on_run_start(cfg)


def test_the_slurm_launcher_asks_for_notice_and_requeues(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from tests.test_sweeps import hydra_cfg

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    params = OmegaConf.to_container(hydra_cfg(["hydra/launcher=slurm"]).hydra.launcher, resolve=False)
    for key in ("_target_", "submitit_folder", "setup"):
        params.pop(key)
    assert params["max_num_timeout"] > 0  # a requeued job continues itself: timeouts may requeue it too
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop(
        "max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    assert "#SBATCH --signal=USR2@120" in text and "#SBATCH --requeue" in text, text


@pytest.mark.parametrize("env, job", [({"SLURM_JOB_ID": "7"}, "7"),
                                      ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"},
                                       "7_2")])
def test_the_requeued_job_is_the_array_task_itself(monkeypatch, env, job):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert requeue.slurm_job_id() == job


def test_without_scontrol_the_message_says_it_was_not_requeued(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    assert requeue.scontrol_requeue().startswith("Not requeued: scontrol requeue 7 failed (")


def test_lightnings_requeue_signal_is_handled_whichever_it_is():
    # SLURMEnvironment(requeue_signal=signal.SIGHUP): with Lightning's auto-requeue taken over, nothing handled
    # SIGHUP, whose default action then ended the job without a checkpoint or a requeue
    signals = (signal.SIGHUP, *requeue.REQUEUE_SIGNALS)
    before = {signum: signal.getsignal(signum) for signum in signals}
    notice = requeue.Requeue()
    notice.lightning_signal = signal.SIGHUP

    def handler(signum, frame):
        pass

    try:
        assert signal.SIGHUP in notice.install(handler)
        assert signal.getsignal(signal.SIGHUP) is handler
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


@pytest.mark.parametrize("requeue_signal", [None, signal.SIGHUP])
def test_lightnings_auto_requeue_is_taken_over_in_a_one_device_slurm_job(monkeypatch, requeue_signal):
    # The environment Lightning's signal connector reads is the accelerator connector's (private): a one-device job
    # runs a SingleDeviceStrategy, which has no cluster_environment for trainer.strategy to hand out instead.
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key, value in SLURM_STEP.items():
        monkeypatch.setenv(key, value)
    plugins = [] if requeue_signal is None else [SLURMEnvironment(requeue_signal=requeue_signal)]
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, plugins=plugins)
    assert getattr(trainer.strategy, "cluster_environment", None) is None
    notice = requeue.Requeue()
    requeue.take_over_lightning_requeue(trainer, notice)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert notice.lightning_signal == (requeue_signal or signal.SIGUSR1)
