
"""Exact resume: k steps + resume for k more equals 2k uninterrupted steps; checkpoint safety; NaN handling."""
import json
import math
import multiprocessing as mp

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from neuralsde.checkpoints import AtomicCheckpointIO, read_checkpoint
from neuralsde.errors import CheckpointError, ConfigError, TrainingDivergedError
from neuralsde.resume import changed_settings, check_resume_compatible, finished_run_metrics, other_run_settings
from neuralsde.training import build, train
from tests.conftest import compose_config, shrink
from tests.test_wandb import _finished_history


def _run(tmp_path, name, steps, ckpt_path=None, overrides=()):
    cfg = shrink(compose_config(list(overrides)), tmp_path / name, steps=steps)
    with open_dict(cfg):
        cfg.test = False
        cfg.ckpt_path = ckpt_path
        cfg.trainer.log_every_n_steps = 1
        cfg.trainer.val_check_interval = 2
        if "swa_start" in cfg.model:
            cfg.model.swa_start = 2
        cfg.callbacks.model_checkpoint.every_n_train_steps = 1000
    train(cfg)
    log = pd.read_csv(tmp_path / name / "csv" / "metrics.csv")
    state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
    return log, state


def assert_same_training_state(full: dict, resumed: dict) -> None:
    """Two checkpoints hold the same training state: parameters, averaged parameters and buffers, optimiser states
    and the torch RNG."""
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in full["state_dict"].items():  # parameters and averaged parameters alike
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert len(full["optimizer_states"]) == len(resumed["optimizer_states"])
    for a, b in zip(full["optimizer_states"], resumed["optimizer_states"], strict=True):
        assert a["state"] and a["state"].keys() == b["state"].keys()
        for pid, st in a["state"].items():
            for name, tensor in st.items():
                assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(b["state"][pid][name])), (pid, name)
    assert full["neuralsde"]["rng"]["torch"].equal(resumed["neuralsde"]["rng"]["torch"])


def test_host_step_count_follows_the_buffer_through_steps_and_loads(tmp_path):
    # steps_taken mirrors the train_step buffer on the host (a read of the buffer waits for a GPU); loading weights
    # (resume, eval.py) must refresh it, or a resumed run would restart its data and its stopping count at zero.
    from neuralsde.training import build

    _, model = build(shrink(compose_config([]), tmp_path, steps=5))
    _, other = build(shrink(compose_config([]), tmp_path, steps=5))
    model.train_batch = lambda batch: None  # the counting is the base class's, around any step
    for _ in range(3):
        model.training_step(None, 0)
    assert model.steps_taken == 3 and int(model.train_step) == 3
    assert other.steps_taken == 0
    other.load_state_dict(model.state_dict())
    assert other.steps_taken == 3


def test_divergence_before_any_checkpoint_does_not_point_at_one(tmp_path):
    from neuralsde.training import build

    _, model = build(shrink(compose_config([]), tmp_path))
    with pytest.raises(TrainingDivergedError, match="No checkpoint was written before this step. Fix: lower"):
        model.check_finite("train/d_loss", torch.tensor(float("nan")))


ALTERNATING = pytest.param(("model.update=alternating", "model.n_critic=2"), marks=pytest.mark.slow)


@pytest.mark.parametrize("overrides", [(), ALTERNATING])
def test_resume_equals_uninterrupted_run(tmp_path, overrides):
    k = 3
    full_log, full = _run(tmp_path, "full", 2 * k, overrides=overrides)
    _, half = _run(tmp_path, "half", k, overrides=overrides)
    resumed_log, resumed = _run(tmp_path, "resumed", 2 * k, tmp_path / "half" / "checkpoints" / "last.ckpt",
                                overrides)
    losses = full_log["train/d_loss"].dropna().to_numpy()
    assert len(losses) == 2 * k
    resumed_losses = resumed_log["train/d_loss"].dropna().to_numpy()
    assert len(resumed_losses) == k and (resumed_losses == losses[k:]).all()
    # alternating: a step without a generator step logs the latest one's loss, kept across the resume as well
    g_losses = full_log["train/g_loss"].dropna().to_numpy()
    assert len(g_losses) == 2 * k and (resumed_log["train/g_loss"].dropna().to_numpy() == g_losses[k:]).all()
    assert int(resumed["state_dict"]["train_step"]) == 2 * k
    assert len(full["optimizer_states"]) == 2  # generator and discriminator
    assert_same_training_state(full, resumed)
    # the validation history that metric_history.png plots: the whole run's, not only the resumed part's
    history = full["callbacks"]["MetricsCallback"]["history"]["val/marginal_w1"]
    resumed_history = dict(resumed["callbacks"]["MetricsCallback"]["history"]["val/marginal_w1"])
    assert [step for step, _ in history] == [2, 4, 6]
    assert sorted(resumed_history) == [2, 3, 4, 6]  # and 3: the first part's validation when it ended
    assert all(resumed_history[step] == value for step, value in history)


def test_latent_sde_resume_equals_uninterrupted_run(tmp_path):
    # The same promise for the second family: its ELBO terms, weights, Adam moments and learning-rate decay.
    k, latent = 2, ("experiment=ou_latent_sde",)
    full_log, full = _run(tmp_path, "full", 2 * k, overrides=latent)
    _run(tmp_path, "half", k, overrides=latent)
    resumed_log, resumed = _run(tmp_path, "resumed", 2 * k, tmp_path / "half" / "checkpoints" / "last.ckpt", latent)
    for key in ("train/elbo", "train/kl"):
        losses = full_log[key].dropna().to_numpy()
        assert len(losses) == 2 * k and (resumed_log[key].dropna().to_numpy() == losses[k:]).all(), key
    assert int(resumed["state_dict"]["train_step"]) == 2 * k
    assert len(full["optimizer_states"]) >= 1
    assert_same_training_state(full, resumed)
    assert [s["_last_lr"] for s in full["lr_schedulers"]] == [s["_last_lr"] for s in resumed["lr_schedulers"]]


def _save_then_die(path, payload):
    class Exploding(dict):
        def __reduce_ex__(self, protocol):
            raise SystemExit(1)  # the process dies in the middle of writing

    AtomicCheckpointIO().save_checkpoint({"payload": payload, "bomb": Exploding()}, path)


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state": torch.arange(3)}, path)
    proc = mp.get_context("fork").Process(target=_save_then_die, args=(path, torch.randn(1000, 1000)))
    proc.start()
    proc.join()
    assert proc.exitcode != 0
    assert torch.equal(torch.load(path)["state"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_preloaded_checkpoint_is_given_once_and_only_for_the_unchanged_file(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state": torch.arange(3)}, path)
    preloaded = {"state": torch.arange(3)}
    io.preload(path, preloaded)
    assert io.load_checkpoint(path) is preloaded
    assert io.load_checkpoint(path) is not preloaded  # given once: not held through the training
    io.preload(path, preloaded)
    io.save_checkpoint({"state": torch.arange(4)}, path)  # replaced meanwhile: read again
    assert torch.equal(io.load_checkpoint(path)["state"], torch.arange(4))


def test_checkpoints_get_the_permissions_of_a_plain_file(tmp_path):
    import os
    import stat

    before = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"state": torch.arange(3)}, tmp_path / "last.ckpt")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == 0o644  # mkstemp's own would be 0o600


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from sdegan.components import discriminator as disc_mod

    forward = disc_mod.Discriminator.forward
    calls = {"n": 0}

    def poisoned(self, paths, solver=None, **kw):
        out = forward(self, paths, solver, **kw)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 4 else out  # one discriminator call (fake and real) per step

    monkeypatch.setattr(disc_mod.Discriminator, "forward", poisoned)
    cfg = shrink(compose_config(), tmp_path, steps=10)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 1000
        cfg.callbacks.model_checkpoint.every_n_train_steps = 2
    with pytest.raises(TrainingDivergedError, match="at training step 4.*resume from it with ckpt_path=.*last.ckpt"):
        train(cfg)
    assert int(read_checkpoint(tmp_path / "checkpoints" / "step000008.ckpt")["state_dict"]["train_step"]) == 4


def _periodic_run(tmp_path, steps: int, every: int):
    """Train ``steps`` steps with a periodic checkpoint every ``every`` optimiser steps, no validation or test."""
    cfg = shrink(compose_config(), tmp_path, steps=steps)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 1000
        cfg.callbacks.model_checkpoint.every_n_train_steps = every
    train(cfg)
    return cfg


def test_last_checkpoint_holds_the_final_weights(tmp_path):
    # A periodic save at training step 4 (8 optimiser steps), then one more step: last.ckpt must be step 5's, the
    # weights the test stage scores and eval.py, sample.py and a resume read.
    _periodic_run(tmp_path, steps=5, every=8)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert int(last["state_dict"]["train_step"]) == 5 and last["global_step"] == 10
    assert int(read_checkpoint(tmp_path / "checkpoints" / "step000008.ckpt")["state_dict"]["train_step"]) == 4


def test_last_checkpoint_is_written_after_the_last_steps_validation(tmp_path):
    # With a periodic save at the last step (4 training steps, 8 optimiser steps), last.ckpt was that save, made
    # inside the step: before its validation (a test stage run again lacked that point of the metric history) and
    # before Lightning counted the batch and the epoch (its test row was logged a batch early, in epoch 0)
    cfg = shrink(compose_config([]), tmp_path, steps=4)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 2
        cfg.callbacks.model_checkpoint.every_n_train_steps = 8
    train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    history = next(v["history"] for k, v in last["callbacks"].items() if "MetricsCallback" in k)
    assert [step for step, _ in history["val/marginal_w1"]] == [2, 4]
    assert last["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 4 and last["epoch"] == 1


def test_a_run_continued_in_its_own_directory_keeps_one_last_checkpoint(tmp_path):
    # Continuing in its own directory from its first periodic checkpoint (saved before any last.ckpt) or with another
    # checkpoint interval, Lightning could not restore the callback's state and wrote last-v1.ckpt beside a stale
    # last.ckpt, which eval.py, sample.py and a later resume then read. RunCheckpoint relies on how Lightning
    # versions names (never last_model_path's): this fails if that changes.
    cfg = _periodic_run(tmp_path, steps=4, every=4)
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "checkpoints" / "step000004.ckpt")  # training step 2
        cfg.model.train_steps = 5
    train(cfg)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # a periodic checkpoint of a step both trajectories reached is kept beside the earlier one's
    assert names == ["last.ckpt", "step000004.ckpt", "step000008-v1.ckpt", "step000008.ckpt"]
    assert int(read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == 5


def test_skip_nonfinite_option_skips_bad_batches(tmp_path, monkeypatch):
    from sdegan.components import discriminator as disc_mod

    forward = disc_mod.Discriminator.forward
    calls = {"n": 0}

    def poisoned(self, paths, solver=None, **kw):
        calls["n"] += 1
        out = forward(self, paths, solver, **kw)
        return out * float("nan") if calls["n"] in (3, 4) else out

    monkeypatch.setattr(disc_mod.Discriminator, "forward", poisoned)
    cfg = shrink(compose_config(["model.skip_nonfinite=true"]), tmp_path, steps=3)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 1000
    with pytest.warns(UserWarning, match=r"train/d_loss is nan at training step 2\..* Skipping this batch"):
        train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    for p in last["state_dict"].values():
        assert torch.isfinite(p.float()).all()
    # trained on to its end; the skipped step applied no optimiser step (two a step: 2 + 0 + 2)
    assert int(last["state_dict"]["train_step"]) == 3 and last["global_step"] == 4


class PoisonStep(pl.Callback):
    """Makes the batch of training step ``step`` infinite: a non-finite loss in either family (the latent SDE reads
    NaNs as missing values)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.steps_taken == self.step:
            for tensor in batch:
                tensor.fill_(float("inf"))


@pytest.mark.parametrize("experiment", ["ou_sdegan", "ou_latent_sde"])
def test_a_skipped_batch_logs_a_skip_not_the_previous_steps_losses(tmp_path, experiment):
    # Lightning writes a training step's logged values again at every written step until they are logged anew: the
    # skipped step's row in metrics.csv (and wandb) carried the step before's losses and train/step as its own.
    overrides = [f"experiment={experiment}", "model.skip_nonfinite=true", "logger=many",
                 "+callbacks.poison._target_=tests.test_resume.PoisonStep", "+callbacks.poison.step=2"]
    loss = "train/d_loss" if experiment == "ou_sdegan" else "train/loss"
    with pytest.warns(UserWarning, match=rf"{loss} is (nan|-?inf) at training step 2\..* Skipping this batch"):
        log, state = _run(tmp_path, "a", 4, overrides=overrides)
    rows = log.dropna(subset=["train/step"]).set_index("step")
    assert rows["train/step"].tolist() == [1.0, 2.0, 3.0, 4.0]  # the training step counter runs on through the skip
    losses = [c for c in rows if c.startswith("train/") and not c.startswith(("train/step", "train/skipped"))]
    assert loss in losses and len(losses) >= (2 if experiment == "ou_sdegan" else 6)
    assert rows.loc[2, losses].isna().all()  # the skipped step reports no losses
    assert rows.loc[[1, 3], losses].notna().all().all()
    assert rows["train/skipped_nonfinite"].fillna(0).tolist() == [0, 0, 1, 1]
    wandb_rows = {json.loads(r["train/step"]): r for r in _finished_history(tmp_path / "a") if "train/step" in r}
    assert not set(wandb_rows[3]) & set(losses) and json.loads(wandb_rows[3]["train/skipped_nonfinite"]) == 1
    assert set(losses) <= set(wandb_rows[4])  # wandb's rows hold what metrics.csv's do
    assert state["neuralsde"]["skipped_nonfinite"] == 1
    # a resumed run goes on counting from the checkpoint's skips
    log, _ = _run(tmp_path, "a", 5, tmp_path / "a" / "checkpoints" / "last.ckpt", overrides[:2])
    last = log.dropna(subset=["train/step"]).iloc[-1]
    assert last["train/step"] == 5 and last["train/skipped_nonfinite"] == 1 and math.isfinite(last[loss])


def test_a_used_run_dir_and_a_finished_checkpoint_are_refused(tmp_path):
    _run(tmp_path, "a", 2)
    before = (tmp_path / "a" / "csv" / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="already holds a run with checkpoints.*hydra.run.dir.*ckpt_path=.*last.ckpt"):
        _run(tmp_path, "a", 2)
    assert (tmp_path / "a" / "csv" / "metrics.csv").read_text() == before
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["last.ckpt"]
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="already trained 2 steps .*nothing is left to train.*train_steps=4"):
        _run(tmp_path, "b", 2, last)
    _run(tmp_path, "b", 3, last)  # a run refused before any checkpoint left nothing to protect: retrying is fine
    _, state = _run(tmp_path, "a", 3, last)  # continuing a run in its own directory (a requeued job) is allowed
    assert state["neuralsde"]["train_step"] == 3
    (kept,) = (tmp_path / "a" / "csv").glob("metrics_before_*.csv")  # and its earlier metrics are kept
    assert kept.read_text() == before


def test_metrics_set_aside_twice_in_one_second_are_both_kept(tmp_path, monkeypatch):
    from neuralsde import resume

    monkeypatch.setattr(resume.time, "strftime", lambda fmt: "2026-01-01_00-00-00")
    (tmp_path / "csv").mkdir()
    for content in ("first", "second", "third"):
        (tmp_path / "csv" / "metrics.csv").write_text(content)
        resume.set_aside_metrics(tmp_path)
    kept = sorted(p.read_text() for p in (tmp_path / "csv").iterdir())
    assert kept == ["first", "second", "third"]  # the second continuation replaced the first one's history


def test_resume_refuses_other_model_size(tmp_path, monkeypatch):
    _run(tmp_path, "a", 2)
    cfg = shrink(compose_config(["model.generator.hidden_size=7"]), tmp_path / "b", steps=3)
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="model size differs.*Fix: resume with the checkpoint's model settings: "
                                              r"model.generator.hidden_size=16 [^,]*\.$"):
        train(cfg)
    # weights of another shape cannot be loaded even deliberately: the error offered NEURALSDE_ALLOW_RESUME_CHANGE=1,
    # which then failed as Lightning's "Error(s) in loading state_dict" traceback
    monkeypatch.setenv("NEURALSDE_ALLOW_RESUME_CHANGE", "1")
    with pytest.raises(CheckpointError, match="model size differs"):
        train(cfg)


def test_resume_allowed_onto_other_data_trains_in_the_checkpoints_units(tmp_path, monkeypatch):
    # NEURALSDE_ALLOW_RESUME_CHANGE=1 onto other data: the new training split was normalised with its own statistics,
    # then Lightning loaded the checkpoint's into the normaliser the data share, so the run trained on data in one
    # unit and mapped its samples (sample.py, plots) back to data units with another.
    import pytorch_lightning as pl

    import neuralsde.training as training

    _run(tmp_path, "a", 2)
    monkeypatch.setenv("NEURALSDE_ALLOW_RESUME_CHANGE", "1")
    seen = {}

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            dm = trainer.datamodule
            seen["error"] = float((dm.to_data_units(dm.train)[..., 1:] - dm.raw.values[dm.split_indices["train"]])
                                  .abs().nan_to_num().max())

    instantiate_all = training._instantiate_all
    monkeypatch.setattr(training, "_instantiate_all",  # the callbacks, not the loggers
                        lambda group: instantiate_all(group) + ([Spy()] if "model_checkpoint" in group else []))
    _, state = _run(tmp_path, "b", 3, tmp_path / "a" / "checkpoints" / "last.ckpt", ("data.source.drop_fraction=0.5",))
    first = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(state["state_dict"]["normalizer.shift"], first["normalizer.shift"])
    assert seen["error"] < 1e-5


def test_resume_auto_in_a_sweep_job_continues_only_that_job(tmp_path, monkeypatch):
    from neuralsde import resume

    monkeypatch.setattr(resume, "in_multirun", lambda: True)
    (tmp_path / "logs" / "train" / "runs" / "other" / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "train" / "runs" / "other" / "checkpoints" / "last.ckpt").write_bytes(b"another run")
    cfg = shrink(compose_config(["resume=auto"]), tmp_path / "job", steps=3)
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "logs")  # where a single run's resume=auto looks
    assert resume.resolve_ckpt_path(cfg) is None  # first attempt: nothing of its own yet, not the other run
    (tmp_path / "job" / "checkpoints").mkdir(parents=True)
    (tmp_path / "job" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume.resolve_ckpt_path(cfg) == str(tmp_path / "job" / "checkpoints" / "last.ckpt")  # requeued


def test_resume_auto_in_a_single_runs_own_directory(tmp_path):
    # `hydra.run.dir=X resume=auto resume_dir=X`: one command for a requeued single job's first start and its
    # requeues. The first start failed ("found no checkpoint"); without resume_dir a requeue took another run's.
    import os

    from neuralsde import resume

    other = tmp_path / "logs" / "train" / "runs" / "other" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another run")
    cfg = shrink(compose_config(["resume=auto"]), tmp_path / "job", steps=3)
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.resume_dir = str(tmp_path / "job")
    assert resume.resolve_ckpt_path(cfg) is None  # first start: fresh
    own = tmp_path / "job" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    os.utime(other, (own.stat().st_mtime + 10,) * 2)  # the other run's is newer
    assert resume.resolve_ckpt_path(cfg) == str(own)  # requeued
    cfg.resume_dir = None
    assert resume.resolve_ckpt_path(cfg) == str(own)  # a run directory's own checkpoints come first


def test_resume_auto_on_a_finished_job_returns_its_metrics(tmp_path):
    # Rerunning a sweep with resume=auto to finish its interrupted jobs failed every finished one with "nothing is
    # left to train"; a finished job now does nothing and gives the sweeper its last logged metrics.
    log, _ = _run(tmp_path, "job", 2)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "job").rglob("*"))
    cfg = shrink(compose_config(["resume=auto"]), tmp_path / "job", steps=2)
    with open_dict(cfg):
        cfg.resume_dir = str(tmp_path / "job")
        cfg.test = False  # as the job ran (with test on, its missing test stage would be run)
    metrics = train(cfg)
    assert metrics["train/d_loss"] == log["train/d_loss"].dropna().iloc[-1]
    assert metrics["val/marginal_w1"] == log["val/marginal_w1"].dropna().iloc[-1]
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "job").rglob("*")) == before  # nothing rewritten
    with open_dict(cfg):
        cfg.model.train_steps = 3  # an unfinished job continues
    train(cfg)
    assert int(read_checkpoint(tmp_path / "job" / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == 3


def test_resume_auto_picks_newest_checkpoint(tmp_path):
    _run(tmp_path, "a", 2)
    cfg = shrink(compose_config(["resume=auto"]), tmp_path / "b", steps=3)
    with open_dict(cfg):
        cfg.resume_dir = str(tmp_path / "a")
        cfg.test = False
    train(cfg)
    assert int(read_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == 3


RESUME_TINY = ["data.source.t_size=8", "data.batch_size=16", "model.train_steps=4"]


def _saved_checkpoint(tmp_path, overrides):
    """A checkpoint, 2 steps into 4, of the model ``overrides`` build (nothing trained: its shapes and config)."""
    _, model = build(compose_config([*overrides, f"paths.output_dir={tmp_path}"]))
    checkpoint = {"state_dict": model.state_dict(), "neuralsde": {}}
    model.on_save_checkpoint(checkpoint)
    checkpoint["neuralsde"]["train_step"] = 2
    torch.save(checkpoint, tmp_path / "a.ckpt")
    return tmp_path / "a.ckpt"


def test_refused_resume_names_the_changed_setting(tmp_path):
    # the changes come grouped by what they affect, and the fix names those that explain the refusal: a changed
    # batch size and learning rate were listed in the fix beside the data change that was refused
    ckpt = _saved_checkpoint(tmp_path, [*RESUME_TINY, "data.source.n_paths=64"])
    _, other = build(compose_config([*RESUME_TINY, "data.source.n_paths=80", "data.batch_size=8",
                                     "model.optimizer.g_lr=0.02", "solver.dt=0.5", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError) as err:
        check_resume_compatible(str(ckpt), other, read_checkpoint(ckpt))
    assert str(err.value) == (
        f"Cannot resume from {str(ckpt)!r}: the dataset differs (times or normalisation). Changed since the "
        "checkpoint: data: data.source.n_paths 64 -> 80; batches: data.batch_size 16 -> 8; optimiser: "
        "model.optimizer.g_lr 0.01 -> 0.02; solver: solver.dt 1.0 -> 0.5. Fix: resume with the checkpoint's data "
        "settings: data.source.n_paths=64, or set NEURALSDE_ALLOW_RESUME_CHANGE=1 to allow it deliberately.")


def test_refused_resume_of_another_size_names_the_model_settings(tmp_path):
    # a 1-step run resumed with a changed batch size and generator width: the fix named data.batch_size=16 first
    ckpt = _saved_checkpoint(tmp_path, RESUME_TINY)
    _, other = build(compose_config([*RESUME_TINY, "data.batch_size=8", "model.generator.hidden_size=24",
                                     f"paths.output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError, match=r"model size differs \(\['generator.*'\]\)\. Changed since the "
                                              r"checkpoint: model: model.generator.hidden_size 16 -> 24; batches: "
                                              r"data.batch_size 16 -> 8\. Fix: resume with the checkpoint's model "
                                              r"settings: model.generator.hidden_size=16\.$"):
        check_resume_compatible(str(ckpt), other, read_checkpoint(ckpt))


def test_refused_resume_with_other_channels_names_the_data_settings(tmp_path):
    # a model's input size follows the data's channels: there the data change explains it, beside the model's
    (tmp_path / "d.csv").write_text("a,b\n" + "".join(f"{i % 5},{i % 3}\n" for i in range(40)))
    csv = ["data=csv", f"data.source.path={tmp_path / 'd.csv'}", "data.source.window_length=8",
           "data.split_by=time", "model.train_steps=4"]
    ckpt = _saved_checkpoint(tmp_path, [*csv, "data.batch_size=16", "data.source.value_columns=[a,b]"])
    _, other = build(compose_config([*csv, "data.source.value_columns=[a]", "data.batch_size=8",
                                     "model.generator.hidden_size=24", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError) as err:
        check_resume_compatible(str(ckpt), other, read_checkpoint(ckpt))
    assert str(err.value).partition("Changed since ")[2] == (
        "the checkpoint: data: data.source.value_columns ['a', 'b'] -> ['a']; model: model.generator.hidden_size 16 -> "
        "24; batches: data.batch_size 16 -> 8. Fix: resume with the checkpoint's data and model settings: "
        "data.source.value_columns=['a', 'b'] model.generator.hidden_size=16.")


def test_changed_settings_ignores_train_steps():
    saved = {"data": {"batch_size": 16}, "model": {"train_steps": 4, "lr": 1}, "solver": {"dt": 1.0}}
    assert changed_settings(saved, {"data": {"batch_size": 32}, "model": {"train_steps": 8, "lr": 1},
                                    "solver": {"dt": 0.5}}) == ["data.batch_size=16", "solver.dt=1.0"]
    assert changed_settings(None, saved) == []
    # data.seed is ${seed}: a changed run seed is fixed with seed=..., not data.seed=...
    assert changed_settings({"seed": 0, "data": {"seed": 0}}, {"seed": 1, "data": {"seed": 1}}) == ["seed=0"]
    assert changed_settings({"seed": 0, "data": {"seed": 5}}, {"seed": 0, "data": {"seed": 6}}) == ["data.seed=5"]



def test_other_run_settings_ignore_where_the_data_lie():
    # a sweep rerun launched from another directory (data.source.data_dir follows it) or with data staged elsewhere
    # was refused as "another run"; the data themselves are compared by check_resume_compatible
    saved = {"seed": 0, "data": {"eval_batch_size": 1024, "source": {"data_dir": "/a", "cache_dir": "/c", "n": 5}}}
    now = {"seed": 0, "data": {"eval_batch_size": 256, "source": {"data_dir": "/b", "cache_dir": "/d", "n": 5}}}
    assert other_run_settings(saved, now) == []
    now["data"]["source"]["n"] = 6
    assert other_run_settings(saved, now) == ["data.source.n=5"]


def test_a_finished_run_rerun_returns_its_last_figures_nan_included(tmp_path, caplog):
    # the rerun's copy of "last logged value" dropped NaNs (the sweeper got the last finite one), as aggregate.py
    # once did; and a run stopped in its test stage (last.ckpt is written before it) passed as finished silently
    _run(tmp_path, "a", 2)
    csv = tmp_path / "a" / "csv" / "metrics.csv"
    csv.write_text("step,val/sig_mmd,train/d_loss\n0,0.5,1.0\n1,nan,\n")
    cfg = shrink(compose_config(), tmp_path / "a", steps=2)
    with open_dict(cfg):
        cfg.resume, cfg.test = "auto", True
    last = str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    with caplog.at_level("WARNING", logger="neuralsde.resume"):
        got = finished_run_metrics(cfg, last, read_checkpoint(last))
    assert math.isnan(got["val/sig_mmd"]) and got["train/d_loss"] == 1.0
    assert "logged no test/ metrics" in caplog.text and f"python eval.py ckpt_path={last}" in caplog.text


def test_resume_follows_the_configs_optimiser_settings(tmp_path):
    # Lightning restored the optimiser states whole: a learning rate lowered on resume, as the divergence message
    # advises, was silently the checkpoint's; another optimiser met the saved state as a KeyError ('betas').
    _run(tmp_path, "a", 2)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    _, state = _run(tmp_path, "b", 3, last, ("model.optimizer.g_lr=1e-5", "model.optimizer.d_lr=2e-5"))
    assert [g["lr"] for s in state["optimizer_states"] for g in s["param_groups"]] == [1e-5, 2e-5]
    assert int(state["optimizer_states"][0]["state"][0]["step"]) == 3  # the optimiser's own state carried over
    with pytest.raises(CheckpointError, match=r"another optimiser \(model.optimizer.name=adadelta\).*Fix: resume "
                                              r"with model.optimizer.name=adadelta"):
        _run(tmp_path, "c", 3, last, ("model.optimizer.name=adam",))
    assert not (tmp_path / "c" / "csv").exists()  # refused before the loggers started


def test_optimiser_settings_an_older_torch_lacked_are_not_another_optimiser():
    from neuralsde.resume import follow_optimizer_config

    params = [torch.nn.Parameter(torch.zeros(2))]
    saved = {"optimizer_states": [torch.optim.Adam(params, lr=0.1).state_dict()]}
    del saved["optimizer_states"][0]["param_groups"][0]["foreach"]  # as torch versions before that option wrote it
    changes = follow_optimizer_config(saved, [torch.optim.Adam(params, lr=0.01, weight_decay=0.5)])
    assert changes == ["optimiser 0 group 0: weight_decay 0 -> 0.5", "optimiser 0 group 0: learning rate 0.1 -> 0.01"]
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01)
    with pytest.raises(CheckpointError, match="another optimiser"):
        follow_optimizer_config(saved, [torch.optim.SGD(params, lr=0.01)])


def test_latent_resume_restarts_its_schedule_from_a_new_learning_rate(tmp_path):
    latent = ("experiment=ou_latent_sde",)
    _run(tmp_path, "a", 2, overrides=latent)
    _, state = _run(tmp_path, "b", 3, tmp_path / "a" / "checkpoints" / "last.ckpt",
                    (*latent, "model.optimizer.lr=1e-3", "model.optimizer.lr_decay=0.5"))
    (sched,) = state["lr_schedulers"]
    assert sched["gamma"] == 0.5 and sched["base_lrs"] == [1e-3, 1e-3] and sched["last_epoch"] == 3
    # two steps decayed at the checkpoint's 0.999, the third at the new 0.5, all from the new initial rate
    lrs = [g["lr"] for g in state["optimizer_states"][0]["param_groups"]]
    assert lrs == pytest.approx([1e-3 * 0.999 ** 2 * 0.5] * 2, rel=1e-12)


def test_a_resume_reads_its_checkpoint_once_and_follows_the_config_once(tmp_path, monkeypatch):
    # resume=auto continuing its own run loaded and CRC-checked the checkpoint in finished_run_metrics, in
    # check_resume_compatible and again in Lightning's restore, and made the optimiser states follow the config twice
    import zipfile

    from neuralsde import resume

    _run(tmp_path, "job", 2)
    cfg = shrink(compose_config(["resume=auto", f"resume_dir={tmp_path / 'job'}"]), tmp_path / "job", steps=3)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.val_check_interval = 2
        cfg.callbacks.model_checkpoint.every_n_train_steps = 1000
    loads, crc_checks, follows = [], [], []
    real_load, real_testzip, real_follow = torch.load, zipfile.ZipFile.testzip, resume.follow_optimizer_config

    def load(f, *args, **kwargs):
        if ".ckpt" in str(getattr(f, "name", f)):
            loads.append(f)
        return real_load(f, *args, **kwargs)
    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda self: (crc_checks.append(self), real_testzip(self))[1])
    monkeypatch.setattr(resume, "follow_optimizer_config", lambda *a, **k: (follows.append(a), real_follow(*a, **k))[1])
    train(cfg)
    assert (len(loads), len(crc_checks), len(follows)) == (1, 1, 1)
    assert int(read_checkpoint(tmp_path / "job" / "checkpoints" / "last.ckpt")["state_dict"]["train_step"]) == 3


def test_a_resumed_runs_metric_history_spans_the_whole_training(tmp_path):
    # MetricsCallback keeps its history in the checkpoint, so metric_history.png of a resumed run is not only its own
    _run(tmp_path, "a", 4)
    _, state = _run(tmp_path, "b", 6, tmp_path / "a" / "checkpoints" / "last.ckpt")
    history = next(v["history"] for k, v in state["callbacks"].items() if "MetricsCallback" in k)
    assert [step for step, _ in history["val/marginal_w1"]] == [2, 4, 6]


def _history(state: dict) -> dict:
    return next(v["history"] for k, v in state["callbacks"].items() if "MetricsCallback" in k)


def _logged(log: pd.DataFrame, column: str, since: int = 0) -> dict:
    """``{step: value}`` of the metrics.csv rows that hold ``column``, from logged step ``since``."""
    rows = log.dropna(subset=[column])
    return {step: value for step, value in zip(rows["step"], rows[column], strict=True) if step >= since}


@pytest.mark.parametrize("overrides, optimiser_steps", [((), 2), (("experiment=ou_latent_sde",), 1)])
def test_a_resume_from_a_periodic_checkpoint_equals_the_uninterrupted_run(tmp_path, overrides, optimiser_steps):
    # A periodic checkpoint was written inside its step, before that step's validation: its metric history lacked the
    # point, and a run resumed from it never validated there (Lightning restarts after the saved batch), so its
    # metric_history.png and any choice among validations differed from the uninterrupted run's.
    def run(name, ckpt_path=None):
        cfg = shrink(compose_config(list(overrides)), tmp_path / name, steps=6)
        with open_dict(cfg):
            cfg.test, cfg.ckpt_path = False, ckpt_path
            cfg.trainer.log_every_n_steps = 1
            cfg.trainer.val_check_interval = 2
            cfg.callbacks.model_checkpoint.every_n_train_steps = 2 * optimiser_steps  # every other training step
        train(cfg)
        return (pd.read_csv(tmp_path / name / "csv" / "metrics.csv"),
                torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False))

    full_log, full = run("full")
    periodic = tmp_path / "full" / "checkpoints" / f"step{4 * optimiser_steps:06d}.ckpt"
    assert [step for step, _ in _history(read_checkpoint(periodic))["val/marginal_w1"]] == [2, 4]
    resumed_log, resumed = run("resumed", periodic)
    assert _history(resumed) == _history(full) and len(_history(full)["val/marginal_w1"]) == 3

    # the resumed run logs the last two training steps (steps 4 and 5 from 0) and validates at its end only, as the
    # uninterrupted run does from there: step 4's validation is not run a second time
    for column in ("train/elbo" if overrides else "train/d_loss", "val/marginal_w1"):
        assert _logged(resumed_log, column) == _logged(full_log, column, since=4), column
    assert_same_training_state(full, resumed)


def test_scoring_a_checkpoint_with_another_optimiser_configured_is_not_a_resume(tmp_path):
    # trainer.validate/test(ckpt_path=...) restores the optimiser states too: on_load_checkpoint made them follow the
    # config, and refused an Adam config for an Adadelta checkpoint though nothing is optimised there
    import pytorch_lightning as pl

    _run(tmp_path, "a", 2)
    cfg = shrink(compose_config(["model.optimizer.name=adam"]), tmp_path / "b", steps=2)
    datamodule, model = build(cfg)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1,
                         enable_model_summary=False, callbacks=[])
    trainer.validate(model, datamodule=datamodule, ckpt_path=tmp_path / "a" / "checkpoints" / "last.ckpt",
                     verbose=False)
    assert int(model.train_step) == 2


def test_a_sweep_job_does_not_return_a_finished_run_trained_with_another_optimiser(tmp_path, monkeypatch):
    """An Optuna rerun with resume=auto whose trials drew other learning rates (another sampler seed) met each
    finished trial's run in its numbered directory and returned its metrics as the new trial's, under the new
    learning rates (the optimiser may change when a run is continued, so that check left it out)."""
    from neuralsde import resume

    cfg = shrink(compose_config(["resume=auto"]), tmp_path / "job", steps=2)
    ckpt_path = str(tmp_path / "job" / "checkpoints" / "last.ckpt")
    ckpt = {"neuralsde": {"train_step": 2, "config": {"model": OmegaConf.to_container(cfg.model, resolve=True)}}}
    monkeypatch.setattr(resume, "in_multirun", lambda: True)
    assert resume.finished_run_metrics(cfg, ckpt_path, ckpt) == {}  # its own run (no csv here): returned
    with open_dict(cfg):
        cfg.model.optimizer.g_lr = 0.5
    with pytest.raises(ConfigError, match=r"trained with model.optimizer.g_lr=0.01 \(this job: "
                                          r"model.optimizer.g_lr=0.5\): its metrics are not this job's. Fix:"):
        resume.finished_run_metrics(cfg, ckpt_path, ckpt)
    ckpt["neuralsde"]["train_step"] = 1  # unfinished: continued with the new rate, as a single run may
    assert resume.finished_run_metrics(cfg, ckpt_path, ckpt) is None
