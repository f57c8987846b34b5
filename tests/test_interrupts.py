"""Ctrl-C and SIGTERM: the run stops at a step's end with its last.ckpt and its logs, and continues exactly."""
import os
import shlex
import signal
import subprocess
import sys

import pandas as pd
import pytest
import pytorch_lightning as pl
from omegaconf import open_dict

import neuralsde.training as training
from neuralsde import checkpoints
from neuralsde.checkpoints import read_checkpoint
from neuralsde.interrupts import EXIT_CTRL_C, EXIT_SIGTERM, resume_command
from neuralsde.resume import resolve_ckpt_path
from tests.conftest import ROOT, compose_config, shrink
from tests.test_resume import _run, assert_same_training_state

K = 3  # the interrupted runs stop after this many of their 2 * K training steps
SIGNALS = {"sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1, "sigusr2": signal.SIGUSR2}


class Interrupt(pl.Callback):
    """At training step ``step``: ``sigterm`` / ``sigusr1`` / ``sigusr2`` / ``ctrl_c`` send the signal as ``kill``,
    SLURM or a terminal does (inside the step: the run stops at its end), ``raise`` raises KeyboardInterrupt before
    step ``step + 1`` starts, ``twice`` presses Ctrl-C a second time before the step has finished, ``setup`` before
    the fit has restored its checkpoint, ``test`` in the test stage."""

    def __init__(self, how: str, step: int = K):
        self.how, self.step = how, step

    def on_fit_start(self, trainer, module):
        if self.how == "setup":
            raise KeyboardInterrupt

    def on_test_start(self, trainer, module):
        if self.how == "test":
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.how in ("ctrl_c", "twice") and module.steps_taken == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)
        if self.how == "raise" and module.steps_taken == self.step:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.how in SIGNALS and module.steps_taken == self.step:
            os.kill(os.getpid(), SIGNALS[self.how])
        if self.how == "twice" and module.steps_taken == self.step:
            os.kill(os.getpid(), signal.SIGINT)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.how != "sigterm_in_validation" or trainer.sanity_checking or module.steps_taken != self.step:
            return
        if batch_idx == (trainer.num_val_batches[0] - 1 if trainer.global_rank == 0 else 0):
            os.kill(os.getpid(), signal.SIGTERM)


def _with_callback(monkeypatch, callback):
    instantiate_all = training._instantiate_all
    monkeypatch.setattr(training, "_instantiate_all",  # the callbacks, not the loggers
                        lambda group: instantiate_all(group) + ([callback] if "model_checkpoint" in group else []))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"), "full", 2 * K)


@pytest.mark.parametrize("how, code", [("sigterm", EXIT_SIGTERM), ("ctrl_c", EXIT_CTRL_C), ("raise", 1)])
def test_an_interrupted_run_saves_its_step_and_resumes_exactly(tmp_path, monkeypatch, caplog, uninterrupted, how,
                                                                 code):
    # The steps since the last periodic checkpoint (every 1000 optimiser steps here) were lost: Lightning wrote no
    # checkpoint on Ctrl-C or SIGTERM, and a SIGTERM exited with status 0.
    _with_callback(monkeypatch, Interrupt(how))
    with caplog.at_level("WARNING", logger="neuralsde.interrupts"), pytest.raises(SystemExit) as stop:
        _run(tmp_path, "stopped", 2 * K)
    assert stop.value.code == code
    monkeypatch.undo()
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(last)
    assert int(state["state_dict"]["train_step"]) == K and state["global_step"] == 2 * K
    logged = pd.read_csv(tmp_path / "stopped" / "csv" / "metrics.csv").dropna(subset=["train/d_loss"])
    assert logged["step"].tolist() == list(range(K))  # every step's metrics, the last one's too
    assert f"after training step {K} of {2 * K}: saved {last}. Continue with: python train.py" in caplog.text
    assert f"ckpt_path={last}" in caplog.text

    full_log, full = uninterrupted
    ctrl_c = signal.getsignal(signal.SIGINT)
    resumed_log, resumed = _run(tmp_path, "resumed", 2 * K, last)
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # the handler for training is gone with it
    full_losses = full_log.dropna(subset=["train/d_loss"])
    resumed_losses = resumed_log.dropna(subset=["train/d_loss"])
    assert resumed_losses["step"].tolist() == list(range(K, 2 * K))  # neither re-run nor skipped
    assert resumed_losses["train/d_loss"].tolist() == full_losses["train/d_loss"].tolist()[K:]
    assert full["global_step"] == resumed["global_step"] == 4 * K
    assert_same_training_state(full, resumed)


@pytest.mark.parametrize("how", ["sigterm", "raise"])
def test_a_run_interrupted_after_a_validation_resumes_at_its_logged_steps(tmp_path, monkeypatch, uninterrupted, how):
    # Stopped after step 4, which validates: Lightning takes a checkpoint whose step has validated for one saved at
    # its validation's end, before the batch is counted, and counted it again; the resumed run logged every row one
    # step later than the uninterrupted run (4 and 5 as 5 and 6).
    _with_callback(monkeypatch, Interrupt(how, step=4))
    with pytest.raises(SystemExit):
        _run(tmp_path, "stopped", 2 * K)
    monkeypatch.undo()
    resumed_log, resumed = _run(tmp_path, "resumed", 2 * K, tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    full_log, full = uninterrupted
    for column in ("train/d_loss", "val/marginal_w1"):
        full_rows = full_log.dropna(subset=[column])
        full_rows = full_rows[full_rows["step"] >= 4]
        resumed_rows = resumed_log.dropna(subset=[column])
        assert resumed_rows["step"].tolist() == full_rows["step"].tolist(), column
        assert resumed_rows[column].tolist() == full_rows[column].tolist(), column
    history = [next(v["history"] for k, v in s["callbacks"].items() if "MetricsCallback" in k) for s in (full, resumed)]
    assert history[0] == history[1]
    assert_same_training_state(full, resumed)


def _periodic_run(tmp_path, monkeypatch, callback, overrides=()):
    """Train 2 * K steps with a checkpoint every training step but the third, interrupted by ``callback``."""
    cfg = shrink(compose_config(list(overrides)), tmp_path, steps=2 * K)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 1000
        cfg.callbacks.model_checkpoint.every_n_train_steps = 2  # optimiser steps: every training step
    _with_callback(monkeypatch, callback)
    return cfg


def test_an_interrupted_wandb_run_finishes_as_failed(tmp_path, monkeypatch):
    # wandb.finish() after every job recorded exit code 0: a preempted run showed as finished
    from wandb.sdk.wandb_run import Run

    codes, finish = [], Run.finish
    monkeypatch.setattr(Run, "finish", lambda run, exit_code=None, **kw: (codes.append(exit_code),
                                                                           finish(run, exit_code, **kw))[1])
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt("sigterm"), ["logger=wandb"])
    with pytest.raises(SystemExit):
        training.train(cfg)
    assert codes[0] == EXIT_SIGTERM


def test_a_second_ctrl_c_inside_a_step_writes_nothing(tmp_path, monkeypatch, caplog):
    # Its state is partial (optimisers stepped, logs not written): the checkpoint of the step before it is kept.
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt("twice"))
    with caplog.at_level("WARNING", logger="neuralsde.interrupts"), pytest.raises(SystemExit) as stop:
        training.train(cfg)
    assert stop.value.code == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == K - 1  # the callback stopped step K's save
    assert "no checkpoint written (the training step in progress was cut off midway)" in caplog.text
    assert f"the newest is {last}" in caplog.text
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary file left


@pytest.mark.parametrize("how, step, why", [("setup", K, "training had not started"),
                                            ("raise", 0, "no training step had finished since the start")])
def test_ctrl_c_before_training_starts_writes_nothing(tmp_path, monkeypatch, caplog, how, step, why):
    # a resumed run's weights may be half restored then; a fresh run's are untrained, and resume=auto would take them
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt(how, step))
    with caplog.at_level("WARNING", logger="neuralsde.interrupts"), pytest.raises(SystemExit):
        training.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))
    assert f"after training step 0 of {2 * K}: no checkpoint written ({why})." in caplog.text


def test_ctrl_c_in_the_test_stage_points_at_eval_py(tmp_path, monkeypatch, caplog):
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt("test"))
    with open_dict(cfg):
        cfg.test = True
    with caplog.at_level("WARNING", logger="neuralsde.interrupts"), pytest.raises(SystemExit):
        training.train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == 2 * K  # written when training ended
    assert f"in the test stage: training had finished. Score it with: python eval.py ckpt_path={last}" in caplog.text


def test_ctrl_c_while_the_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt("sigterm"))
    save = checkpoints.torch.save
    last = tmp_path / "checkpoints" / "last.ckpt"

    def pressed_midway(obj, f, *args, **kwargs):
        if int(obj["state_dict"]["train_step"]) == K and f.name != str(last):  # the interrupt's own save
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", pressed_midway)
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.every_n_train_steps = 4  # the last periodic save: step 2
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg)
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == K - 1
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_an_interrupted_fast_dev_run_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch, caplog):
    # resume=auto would continue the newest checkpoint: a one-batch smoke test's instead of the real run's
    cfg = _periodic_run(tmp_path, monkeypatch, Interrupt("sigterm", step=1), ["debug=fast"])
    with caplog.at_level("WARNING", logger="neuralsde.interrupts"), pytest.raises(SystemExit) as stop:
        training.train(cfg)
    assert stop.value.code == EXIT_SIGTERM
    assert "no checkpoint written (a fast_dev_run writes no checkpoint)" in caplog.text
    assert not list(tmp_path.rglob("*.ckpt"))
    with open_dict(cfg):
        cfg.resume, cfg.resume_dir = "auto", str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
    assert resolve_ckpt_path(cfg) is None  # starts afresh


def test_the_resume_command_keeps_the_runs_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["seed=3", "resume=auto", "data.source.n_paths=64"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert resume_command("/runs/a b/last.ckpt") == \
            "python train.py seed=3 data.source.n_paths=64 'ckpt_path=/runs/a b/last.ckpt'"
    finally:
        HydraConfig.instance().cfg = None


def _train_py(tmp_path, *overrides, how="sigterm", validation=("trainer.val_check_interval=1000",
                                                                "callbacks.metrics=null")):
    """``python train.py`` at tiny sizes, stopped by SIGTERM at training step K (``how``: see ``Interrupt``), with
    ``validation``'s settings: (finished process, run dir). Its own session: a run that hangs is killed with every
    rank."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "data.source.n_paths=64", "data.source.t_size=16", "data.batch_size=16",
           "model.train_steps=6", "test=false", "trainer.accelerator=cpu", "callbacks.progress_bar=null",
           *validation, *overrides,
           "+callbacks.stop._target_=tests.test_interrupts.Interrupt", f"+callbacks.stop.how={how}",
           f"hydra.run.dir={out}"]
    return run_in_own_session(cmd, {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}), out


def run_in_own_session(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """``cmd`` run from the project root in its own session, output captured: a run that hangs past 300 s is killed
    with every process it started (DDP ranks)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()  # what it printed before it hung: the only clue on a CI machine
        raise AssertionError(f"{shlex.join(cmd)} did not finish in 300 s; it printed:\n{output[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


def test_train_py_stopped_by_sigterm_exits_non_zero_with_its_checkpoint(tmp_path):
    # The command line as a user meets it: Hydra, the exit status, and the line that says how to continue.
    done, out = _train_py(tmp_path)
    assert done.returncode == EXIT_SIGTERM, done.stdout[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert int(read_checkpoint(last)["state_dict"]["train_step"]) == K
    line = next(line for line in done.stdout.splitlines() if "Interrupted (SIGTERM)" in line)
    assert f"saved {last}. Continue with: python train.py data.source.n_paths=64 " in line
    assert line.endswith(f" +callbacks.stop.how=sigterm ckpt_path={last}")  # hydra.run.dir: a new one
    assert "weights_only" not in done.stdout  # Lightning's INFO line when the save leaves it unset


@pytest.mark.slow
def test_ddp_ranks_stopped_by_sigterm_save_without_waiting_for_each_other(tmp_path):
    # Every rank gets a SIGTERM (as from SLURM) and rank 1 another from Lightning's launcher: the barriers of
    # trainer.save_checkpoint waited forever for a rank that was in another collective.
    done, out = _train_py(tmp_path, "trainer=ddp_sim", "extras.print_config=false")
    assert done.returncode == EXIT_SIGTERM, done.stdout[-2000:]
    assert int(read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == K


@pytest.mark.slow
def test_ddp_ranks_sent_sigterm_at_different_validation_batches_stop_together_after_it(tmp_path):
    # Lightning stopped each rank between validation batches on its own: rank 1 left after its first batch while rank
    # 0 went on into the validation's collectives (the sample metrics, sync_dist); the run hung here (with rank 1
    # slower instead, rank 0 failed with "Connection closed by peer"), and no checkpoint was written.
    done, out = _train_py(tmp_path, "trainer=ddp_sim", "extras.print_config=false", how="sigterm_in_validation",
                          validation=(f"trainer.val_check_interval={K}", "trainer.limit_val_batches=3",
                                      "data.eval_batch_size=2"))
    assert done.returncode == EXIT_SIGTERM, done.stdout[-2000:]
    assert int(read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == K
    assert "val/w_dist" in pd.read_csv(out / "csv" / "metrics.csv").columns  # the validation ran to its end


def test_a_fresh_run_leaves_the_choice_of_checkpoint_to_resume(tmp_path, recwarn):
    # As a Lightning OnExceptionCheckpoint, the callback made every fit without ckpt_path load the newest last.ckpt
    # Lightning found (resume's decision, refuse_used_run_dir's guard), with two warnings at each fresh run's start
    _run(tmp_path, "fresh", steps=2)
    assert not [str(w.message) for w in recwarn if "ckpt_path" in str(w.message)]


def test_resume_auto_runs_the_test_stage_a_finished_run_was_stopped_in(tmp_path, monkeypatch, caplog):
    # A run trained to the end but stopped in its test stage (a requeued SLURM job, a sweep rerun with resume=auto)
    # ended without test/ figures, with a warning: aggregate.py left the job out as unfinished.
    sys.path.insert(0, str(ROOT / "scripts"))
    import aggregate

    def config(name):
        cfg = _periodic_run(tmp_path / name, monkeypatch, Interrupt("test" if name == "stopped" else "none"))
        with open_dict(cfg):
            cfg.test = True
            cfg.trainer.val_check_interval = 2  # val/ figures in the CSV, which the rerun must keep
            cfg.trainer.log_every_n_steps = 1
        return cfg

    full = training.train(config("full"))
    monkeypatch.undo()
    stopped = config("stopped")
    with pytest.raises(SystemExit):
        training.train(stopped)
    csv = tmp_path / "stopped" / "csv" / "metrics.csv"
    before = pd.read_csv(csv)
    assert not [c for c in before.columns if c.startswith("test/")]
    assert aggregate.unfinished(tmp_path / "stopped", aggregate.read_metrics(csv)).startswith("unfinished: no test/")
    with open_dict(stopped):
        stopped.resume = "auto"
    with pytest.raises(SystemExit):  # the rerun's test stage stopped too: the earlier rows stay where they were
        training.train(stopped)
    assert pd.read_csv(csv).equals(before) and not list(csv.parent.glob("metrics_before_*"))

    monkeypatch.undo()
    with caplog.at_level("INFO", logger="neuralsde.resume"):
        rerun = training.train(stopped)
    assert "running its test stage" in caplog.text and "logged no test/ metrics (stopped" in caplog.text
    assert "Fix: python eval.py" not in caplog.text
    tests = {k: v for k, v in full.items() if k.startswith("test/")}
    assert tests and {k: v for k, v in rerun.items() if k.startswith("test/")} == tests
    timing = {"train/step_time", "train/steps_per_s"}  # wall-clock figures, the runs' own
    assert rerun.keys() == full.keys()
    assert {k: v for k, v in rerun.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
    after = pd.read_csv(csv)
    assert after.iloc[:len(before)][before.columns].equals(before)  # the earlier rows kept, the test row after them
    logged = aggregate.read_metrics(csv)
    assert aggregate.unfinished(tmp_path / "stopped", logged) is None
    full_logged = aggregate.read_metrics(tmp_path / "full" / "csv" / "metrics.csv")
    assert logged.keys() == full_logged.keys()
    assert {k: v for k, v in logged.items() if k not in timing} == {k: v for k, v in full_logged.items()
                                                                     if k not in timing}
    assert not list(csv.parent.glob("metrics_before_*"))  # merged back, not left beside it


def test_a_rerun_test_stage_logs_where_training_ended_with_its_whole_metric_history(tmp_path, monkeypatch):
    # The test stage of a run stopped in it, run again by resume=auto, logged its test row at step 0 of epoch 0 (a
    # test-only trainer restores no loop counters) and drew metric_history.png without the last validation: last.ckpt
    # was the final step's periodic save, made inside that step, before its validation ran.
    from neuralsde.metrics import plots

    drawn, plot = [], plots.plot_metric_history
    monkeypatch.setattr(plots, "plot_metric_history",
                        lambda history, *args: drawn.append(history) or plot(history, *args))

    def run(name, how, resume=None):
        with monkeypatch.context() as patched:
            cfg = _periodic_run(tmp_path / name, patched, Interrupt(how))  # a periodic save at every step, the last too
            with open_dict(cfg):
                cfg.test, cfg.resume = True, resume
                cfg.trainer.val_check_interval = 2
                cfg.callbacks.metrics.test_metrics = ["marginal_w1"]
            training.train(cfg)

    run("full", "none")
    with pytest.raises(SystemExit):
        run("stopped", "test")
    run("stopped", "none", resume="auto")

    def test_row(name):
        frame = pd.read_csv(tmp_path / name / "csv" / "metrics.csv")
        return frame.dropna(subset=["test/marginal_w1"])[["step", "epoch"]].values.tolist()

    assert test_row("stopped") == test_row("full") == [[2 * K, 1]]  # after the 2 * K training batches, in epoch 1
    assert len(drawn) == 2 and drawn[1] == drawn[0]  # the uninterrupted run's, then the rerun's
    assert [step for step, _ in drawn[1]["val/marginal_w1"]] == [2, 4, 2 * K]


def test_an_interrupted_sweep_says_how_to_finish_it_in_place(tmp_path):
    """Was: the line named the single-run command, which continued the job in a new directory outside the sweep
    (where aggregate.py does not look) and left the sweep's later jobs unrun."""
    cmd = [sys.executable, "train.py", "-m", "seed=0,1", "data.source.n_paths=64", "data.source.t_size=16",
           "data.batch_size=16", "model.train_steps=6", "test=false", "trainer.accelerator=cpu",
           "callbacks.progress_bar=null", "trainer.val_check_interval=1000", "callbacks.metrics=null",
           "+callbacks.stop._target_=tests.test_interrupts.Interrupt", "+callbacks.stop.how=sigterm",
           f"hydra.run.dir={tmp_path / 'unused'}"]  # the sweep directory left to its timestamped default
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    done = run_in_own_session([*cmd, f"paths.log_dir={tmp_path / 'logs'}"], env)
    assert done.returncode == EXIT_SIGTERM, done.stdout[-2000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    line = next(line for line in done.stdout.splitlines() if "Interrupted (SIGTERM)" in line)
    command = line.split("Continue with: ", 1)[1]
    assert command == shlex.join(["python", "train.py", "-m", "hydra.run.dir=" + str(tmp_path / "unused"),
                                  f"hydra.sweep.dir={sweep}", *cmd[3:-1], f"paths.log_dir={tmp_path / 'logs'}",
                                  "resume=auto"])
    assert not (sweep / "1").exists()
    # run as printed (the test's interrupt turned off): job 0 continues in place, job 1 runs
    again = [sys.executable, *shlex.split(command)[1:]]
    again[again.index("+callbacks.stop.how=sigterm")] = "+callbacks.stop.how=none"
    done = run_in_own_session(again, env)
    assert done.returncode == 0, done.stdout[-2000:]
    assert f"resume=auto: continuing from {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in done.stdout
    for job in ("0", "1"):
        assert int(read_checkpoint(sweep / job / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == 6


def test_an_interrupted_optuna_trial_names_the_studys_command(tmp_path, monkeypatch):
    """Optuna writes no multirun.yaml: the command is this process's own. Was: the single-run command, which kept
    hparams_search=ou_optuna and so started a new study, every trial continuing the one checkpoint."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=ou_optuna", f"hydra.sweep.dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        monkeypatch.setattr(sys, "argv", ["/src/train.py", "hparams_search=ou_optuna", "hydra.sweeper.n_trials=2",
                                          "model.optimizer.g_lr=choice(0.01,1e30)", "hydra.sweep.dir=old", "-m"])
        assert resume_command("/x/last.ckpt") == (
            f"python train.py -m hydra.sweeper.n_trials=2 hydra.sweep.dir={tmp_path} hparams_search=ou_optuna "
            "'model.optimizer.g_lr=choice(0.01,1e30)' resume=auto")
        monkeypatch.setattr(sys, "argv", ["-c"])  # a launcher's worker process: no command line to read
        assert resume_command("/x/last.ckpt") == \
            f"the sweep's own command, with hydra.sweep.dir={tmp_path} resume=auto"
    finally:
        HydraConfig.instance().cfg = None
