"""Resuming and run directories: which checkpoint a run continues from, whether it may (same family, size and
data), and that a run never writes over another's directory."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from neuralsde.atomic import atomic_write
from neuralsde.config_checks import flat_settings
from neuralsde.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def continues_in(ckpt_path: str | None, run_dir: Path) -> bool:
    """Whether ``ckpt_path`` lies in ``run_dir``: continuing that run from its own checkpoint (``~`` expanded)."""
    return ckpt_path is not None and Path(str(ckpt_path)).expanduser().resolve().is_relative_to(Path(run_dir).resolve())


def own_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's checkpoints, oldest first: ``checkpoints/`` and Lightning's SLURM ``hpc_ckpt_N.ckpt`` (written
    into the run directory itself by its auto-requeue, when ``InterruptCheckpoint`` is off). Unseen, such a file was
    taken by Lightning behind this module's back (no compatibility check, the earlier metrics deleted)."""
    found = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def refuse_used_run_dir(out_dir: Path, ckpt_path: str | None) -> bool:
    """Runs never overwrite each other: a run directory given by hand (``hydra.run.dir``) whose run has written
    checkpoints would get its config and metrics replaced, and new checkpoints beside its own (``last-v1.ckpt``).
    Continuing that run from its own checkpoint is allowed (a SLURM job requeued with ``resume=auto``): True.
    Only checkpoints mark a run: a run refused or failed before its first one leaves nothing to protect, and a
    ``config.yaml`` may come from another DDP process of this very run."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # only the first process writes checkpoints
        return False
    if continues_in(ckpt_path, out_dir):
        return True
    saved = own_checkpoints(out_dir)
    if saved:
        raise ConfigError(f"The run directory {str(out_dir)!r} already holds a run with checkpoints. Runs never "
                          "overwrite each other. Fix: choose a new hydra.run.dir (left unset, every run gets its own "
                          f"timestamped directory) or delete the old run; to continue it, pass ckpt_path={saved[-1]} "
                          "(with a larger model.train_steps if it has finished).")
    return False


def set_aside_metrics(out_dir: Path) -> Path | None:
    """Keep a continued run's earlier ``csv/metrics.csv``, which Lightning's CSV logger deletes when it starts:
    the path it is kept at, or None without one."""
    earlier = out_dir / "csv" / "metrics.csv"
    if earlier.is_file():
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        kept, n = earlier.with_name(f"metrics_before_{stamp}.csv"), 1
        while kept.exists():  # two continuations within one second: the first one's metrics are kept too
            kept, n = earlier.with_name(f"metrics_before_{stamp}-{n}.csv"), n + 1
        earlier.replace(kept)
        return kept
    return None


def put_back_metrics(out_dir: Path, kept: Path | None) -> None:
    """A finished run's test stage run again (``finished_run_metrics``): its earlier rows (``kept``, set aside) and
    the new test rows in one ``csv/metrics.csv`` again, which ``scripts/aggregate.py`` reads whole (the test rows
    alone lost every val/ figure). Also after an interrupted test stage, so the next rerun finds them."""
    import pandas as pd

    if kept is None or not kept.is_file():
        return
    csv = out_dir / "csv" / "metrics.csv"
    frames = [pd.read_csv(kept, dtype=str, keep_default_na=False)]  # as written: empty cells and 'nan' kept apart
    if csv.is_file() and csv.stat().st_size:  # none, or empty, where the test stage was stopped again
        frames.append(pd.read_csv(csv, dtype=str, keep_default_na=False))
    with atomic_write(csv) as f:
        pd.concat(frames, ignore_index=True).fillna("").to_csv(f, index=False)
    kept.unlink()


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path`` as given, or with ``resume=auto`` the newest checkpoint of the run's own directory if it has
    one, else under ``resume_dir``. Its default: in a single run, this task's run directories; in a multirun job,
    the job's own directory. Where that is the run's own directory (a multirun job, or ``resume_dir`` equal to
    ``hydra.run.dir``), none yet means a fresh start (a SLURM job requeued after a timeout continues itself, never
    another run)."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if cfg.get("resume") is None and requeued_slurm_job():
        return _own_after_requeue(Path(cfg.paths.output_dir))
    if cfg.get("resume") in (None, False, "none"):
        return None
    if cfg.resume != "auto":
        raise ConfigError(f"resume={cfg.resume!r} is not valid: expected null or 'auto'. Fix: use resume=auto, or "
                          "ckpt_path=PATH for a specific checkpoint.")
    out_dir, resume_dir = Path(cfg.paths.output_dir), cfg.get("resume_dir")
    # A run directory's own checkpoints come first, and one told to look in itself starts fresh while it has none:
    # `hydra.run.dir=/scratch/job resume=auto resume_dir=/scratch/job` is then one command for a single job's
    # first start and its requeues (the first start failed with "found no checkpoint", and without resume_dir a
    # requeue took the newest checkpoint under logs/train/runs, another run's, and was refused for it).
    own_dir = not resume_dir or Path(str(resume_dir)).expanduser().resolve() == out_dir.resolve()
    own = own_checkpoints(out_dir) if own_dir else []
    own_job = (not resume_dir and in_multirun()) or (bool(resume_dir) and own_dir)
    root = out_dir if own_job else Path(resume_dir or Path(cfg.paths.log_dir) / cfg.task_name / "runs")
    found = own or sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found and own_job:  # every DDP process resolves it (the same file): one says so
        rank_zero_only(log.info)("resume=auto: no checkpoint in this job's directory yet, starting from scratch")
        return None
    if not found:
        raise ConfigError(f"resume=auto found no checkpoint under {str(root)!r}. Fix: set resume_dir=<run directory> "
                          "or pass ckpt_path=PATH.")
    rank_zero_only(log.info)("resume=auto: continuing from %s", found[-1])
    return str(found[-1])


def requeued_slurm_job() -> bool:
    """Whether this process is a SLURM job started again after a requeue (preemption, a time limit's requeue, or
    ``scontrol requeue``): SLURM counts the restarts in ``SLURM_RESTART_COUNT``."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def continues_own_run(cfg: DictConfig) -> bool:
    """Whether the job continues its own run: ``resume=auto``, or ``resume`` unset in a requeued SLURM job."""
    return cfg.get("resume") == "auto" or (cfg.get("resume") is None and requeued_slurm_job())


def _own_after_requeue(out_dir: Path) -> str | None:
    """A requeued job left at ``resume`` unset continues its own run directory's newest checkpoint, as with
    ``resume=auto``: it ran that very command before and was stopped (it failed as a used run directory)."""
    own = own_checkpoints(out_dir) if out_dir.is_dir() else []
    # every DDP process resolves it (the same file): one says so
    if own:
        rank_zero_only(log.info)("SLURM requeued this job (SLURM_RESTART_COUNT=%s): continuing from its own %s",
                                 os.environ["SLURM_RESTART_COUNT"], own[-1])
        return str(own[-1])
    rank_zero_only(log.warning)("SLURM requeued this job but its run directory %s holds no checkpoint: starting from "
                                "scratch. A single job's run directory changes at every start unless fixed: pass "
                                "hydra.run.dir=<a fixed directory> resume=auto resume_dir=<the same> (a sweep's jobs "
                                "keep theirs)", out_dir)
    return None


def finished_run_metrics(cfg: DictConfig, ckpt_path: str | None, ckpt: dict | None,
                         test_stage: Callable[[], dict[str, float]] | None = None) -> dict[str, float] | None:
    """With ``resume=auto``, a run whose own newest checkpoint has done its ``model.train_steps``: its last logged
    metrics (``csv/metrics.csv``), else None. Rerunning a sweep with ``resume=auto`` to finish its interrupted jobs
    (as the used-sweep-directory error advises) failed every finished job with "nothing is left to train".
    ``ckpt``: the checkpoint read from ``ckpt_path`` (``read_checkpoint``). A run stopped in its test stage
    (``last.ckpt`` is written before it) with ``test`` on has ``test_stage()`` run, which returns its metrics:
    a requeued job or a sweep rerun ended without the test/ figures that ``scripts/aggregate.py`` reads."""
    out_dir = Path(cfg.paths.output_dir)
    if not continues_own_run(cfg) or cfg.get("ckpt_path") or not continues_in(ckpt_path, out_dir):
        return None
    done = int(ckpt["neuralsde"].get("train_step", 0))
    if done < int(cfg.model.train_steps):
        return None
    if in_multirun():
        _refuse_another_finished_run(cfg, ckpt_path, ckpt)
    from neuralsde.run_metrics import last_logged

    csv = out_dir / "csv" / "metrics.csv"
    metrics = last_logged(csv) if csv.is_file() else {}  # a NaN at the end stays NaN, as aggregate.py reads it
    if not cfg.get("test") or any(key.startswith("test/") for key in metrics):
        log.info("resume=auto: %s has already trained its %d steps; nothing to do", ckpt_path, done)
    elif test_stage is not None:
        log.info("resume=auto: %s has trained its %d steps but logged no test/ metrics (stopped during its test "
                 "stage): running its test stage", ckpt_path, done)
        metrics.update(test_stage())
    else:
        log.warning("resume=auto: %s has trained its %d steps but logged no test/ metrics (stopped during its test "
                    "stage?). Fix: python eval.py ckpt_path=%s scores it", ckpt_path, done, ckpt_path)
    return metrics


def optimiser_changes(saved: dict | None, current: dict) -> list[str]:
    """The checkpoint's ``model.optimizer.*=value`` settings that differ from ``current``'s (a resolved config). A
    continued run may change them, but a finished run returned as a sweep job's result must have been trained with
    that job's own: ``other_run_settings`` leaves them out, so a ``resume=auto`` rerun whose job numbers named other
    learning rates (another Optuna sampler seed, a reordered ``-m model.optimizer.g_lr=...``) returned each finished
    run's metrics under another job's learning rate."""
    return [s for s in changed_settings(saved, current) if s.startswith("model.optimizer.")]


def _refuse_another_finished_run(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> None:
    from omegaconf import OmegaConf

    current = {"model": OmegaConf.to_container(cfg.model, resolve=True)}
    differ = optimiser_changes(ckpt["neuralsde"].get("config"), current)
    if differ:
        mine = " ".join(f"{d.partition('=')[0]}={OmegaConf.select(cfg, d.partition('=')[0])}" for d in differ)
        raise ConfigError(f"resume=auto found the finished run {ckpt_path!r} in this sweep job's directory, but it was "
                          f"trained with {' '.join(differ)} (this job: {mine}): its metrics are not this job's. Fix: "
                          "rerun the sweep with its first command's overrides (the job numbers must name the same "
                          "runs), or give this sweep a new hydra.sweep.dir.")


def check_resume_compatible(ckpt_path: str, model, ckpt: dict) -> None:
    """Refuse a checkpoint (``ckpt``, read from ``ckpt_path``) of another family, model size or dataset before
    Lightning meets it. Its optimiser settings then follow the config as Lightning restores it
    (``GenerativeModule.on_load_checkpoint``)."""
    if ckpt["neuralsde"]["family"] != model.family:
        raise CheckpointError(f"{ckpt_path!r} holds a {ckpt['neuralsde']['family']!r} model but this config builds "
                              f"a {model.family!r} model. Fix: resume with the experiment that wrote it.")
    done = int(ckpt["neuralsde"].get("train_step", 0))
    if done >= model.train_steps:
        raise ConfigError(f"{ckpt_path!r} has already trained {done} steps and model.train_steps={model.train_steps}: "
                          f"nothing is left to train. Fix: raise model.train_steps (e.g. model.train_steps="
                          f"{2 * done}) to train further, or evaluate it with python eval.py ckpt_path={ckpt_path}.")
    own, theirs = model.state_dict(), ckpt["state_dict"]
    differ = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape] + sorted(set(theirs) - set(own))
    data_changed = "times" in theirs and (theirs["times"].shape != own["times"].shape
                                          or not torch.equal(theirs["times"], own["times"]))
    for key in ("normalizer.shift", "normalizer.scale"):
        if key in theirs and (theirs[key].shape != own[key].shape or not torch.allclose(theirs[key], own[key])):
            data_changed = True
    # Weights of another shape cannot be loaded, allowed or not: offering NEURALSDE_ALLOW_RESUME_CHANGE=1 for them
    # led to Lightning's "Error(s) in loading state_dict" traceback.
    if differ or (data_changed and not ckpt_allows_change()):
        resized = bool(set(differ) - {"times"})
        what = (f"model size differs ({differ[:3]})" if resized else
                "the number of observation times differs" if differ else
                "the dataset differs (times or normalisation)")
        changes = setting_changes(ckpt["neuralsde"].get("config"), model.run_config)
        # which of the changed settings can explain the refusal: the model's size follows the model settings and
        # the data's channels; the times and normalisation follow the data settings (and the seed)
        saved_channels = (ckpt["neuralsde"].get("data") or {}).get("channel_names")
        channels = (getattr(model, "data_meta", None) or {}).get("channel_names")
        causes = ({"model"} | ({"data"} if saved_channels is not None and saved_channels != channels else set())
                  if resized else {"data"})
        culprits = [f"{k}={before}" for k, before, _ in changes if setting_group(k) in causes]
        undo = [f"{k}={before}" for k, before, _ in changes]
        fix = (f"resume with the checkpoint's {' and '.join(sorted(causes))} settings: {' '.join(culprits[:6])}"
               if culprits else
               f"resume with the checkpoint's values of the settings that differ: {' '.join(undo[:6])}" if undo else
               "resume with the config of the run that wrote it")
        allow = "" if differ else ", or set NEURALSDE_ALLOW_RESUME_CHANGE=1 to allow it deliberately"
        raise CheckpointError(f"Cannot resume from {ckpt_path!r}: {what}.{grouped_changes(changes, causes)} "
                              f"Fix: {fix}{allow}.")
    refuse_other_optimizer(ckpt, model.configure_optimizers(), ckpt_path)  # here, before any logger has started


# A scheduler's progress, kept from the checkpoint; its other entries (ExponentialLR's gamma) follow the config.
_SCHEDULER_PROGRESS = {"base_lrs", "last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step"}


def follow_optimizer_config(checkpoint: dict, configured, ckpt_path: str = "the checkpoint") -> list[str]:
    """Make the checkpoint's optimiser and scheduler states follow the run's config (``configured``: what the
    module's ``configure_optimizers`` returns) and return the changes made. Lightning restores them whole, so a
    learning rate lowered on resume, as the divergence message advises, was silently replaced by the checkpoint's
    (and another optimiser met its state as a KeyError). Kept: the state (moments, step counts) and the schedule's
    progress; a changed initial learning rate rescales the scheduled one. Another optimiser kind is refused."""
    optimizers, schedulers = _optimizers_and_schedulers(configured)
    refuse_other_optimizer(checkpoint, configured, ckpt_path)
    saved_opts, saved_scheds = checkpoint.get("optimizer_states") or [], checkpoint.get("lr_schedulers") or []
    changes = []
    for i, (opt, saved) in enumerate(zip(optimizers, saved_opts, strict=False)):
        groups = saved["param_groups"]
        for j, (group, old) in enumerate(zip(opt.param_groups, groups, strict=False)):
            for key, value in group.items():
                if key not in ("params", "lr", "initial_lr") and key in old and old[key] != value:
                    changes.append(f"optimiser {i} group {j}: {key} {old[key]} -> {value}")
                    old[key] = value
            new_lr, old_lr = group.get("initial_lr", group["lr"]), old.get("initial_lr", old["lr"])
            if new_lr != old_lr:
                changes.append(f"optimiser {i} group {j}: learning rate {old_lr:g} -> {new_lr:g}")
                old["lr"] *= new_lr / old_lr  # a scheduled rate keeps its progress: lr_now = new_lr * decay so far
                if "initial_lr" in old:
                    old["initial_lr"] = new_lr
                for sched, state in zip(schedulers, saved_scheds, strict=False):
                    if sched.optimizer is opt:
                        state["base_lrs"][j] = new_lr
                        state["_last_lr"][j] *= new_lr / old_lr
    for sched, state in zip(schedulers, saved_scheds, strict=False):
        for key, value in sched.state_dict().items():
            if key not in _SCHEDULER_PROGRESS and state.get(key) != value:
                changes.append(f"{type(sched).__name__}: {key} {state.get(key)} -> {value}")
                state[key] = value
    return changes


def refuse_other_optimizer(checkpoint: dict, configured, ckpt_path: str = "the checkpoint") -> None:
    """A CheckpointError if the checkpoint's optimisers are of another kind than the config's (``configured``: what
    ``configure_optimizers`` returns), whose state cannot carry over."""
    saved_opts = checkpoint.get("optimizer_states") or []
    for opt, saved in zip(_optimizers_and_schedulers(configured)[0], saved_opts, strict=False):
        # Another optimiser has settings of its own on both sides (Adadelta's rho, Adam's betas); a checkpoint of an
        # older torch merely lacks settings added since, which torch's load_state_dict fills in.
        if any(set(old) - set(group) - {"initial_lr"} and set(group) - set(old) - {"initial_lr"}
               for group, old in zip(opt.param_groups, saved["param_groups"], strict=False)):
            saved_cfg = ((checkpoint.get("neuralsde") or {}).get("config") or {}).get("model") or {}
            name = (saved_cfg.get("optimizer") or {}).get("name", "<the checkpoint's>")
            raise CheckpointError(f"Cannot resume from {ckpt_path!r}: it was trained with another optimiser "
                                  f"(model.optimizer.name={name}), whose state cannot carry over to this config's "
                                  f"{type(opt).__name__}. Fix: resume with model.optimizer.name={name} (learning "
                                  "rates and other optimiser settings may change on resume).")


def _optimizers_and_schedulers(configured) -> tuple[list, list]:
    """The optimisers and schedulers in what ``configure_optimizers`` returns."""
    optimizers, schedulers = [], []
    for item in configured if isinstance(configured, (list, tuple)) else [configured]:
        if isinstance(item, dict):
            optimizers.append(item["optimizer"])
            sched = item.get("lr_scheduler")
            schedulers += [sched["scheduler"] if isinstance(sched, dict) else sched] if sched is not None else []
        else:
            optimizers.append(item)
    return optimizers, schedulers


def setting_changes(saved: dict | None, current: dict | None) -> list[tuple[str, object, object]]:
    """``(key, the checkpoint's value, the value now)`` for each data, model and solver setting that differs now:
    "the dataset differs" alone left the user to find that data.source.n_paths had been left at its default."""
    if not saved or not current:
        return []
    out = []
    for section in ("data", "model", "solver"):
        before, now = (flat_settings(config.get(section) or {}, f"{section}.") for config in (saved, current))
        out += [(k, before[k], now[k]) for k in before if k in now and before[k] != now[k] and k != "model.train_steps"]
    # data.seed follows the run's seed (${seed}): a changed seed is fixed by seed=..., which data.seed=... is not
    # (the data would match, the run's own noise not)
    seed = saved.get("seed")
    if seed is not None and seed != current.get("seed"):
        out = [("seed", seed, current.get("seed")) if (k, before) == ("data.seed", seed) else (k, before, now)
               for k, before, now in out]
    return out


def changed_settings(saved: dict | None, current: dict | None) -> list[str]:
    """``key=value`` with the checkpoint's value for each setting of ``setting_changes``: the overrides that undo
    them."""
    return [f"{k}={before}" for k, before, _ in setting_changes(saved, current)]


# Data settings that shape the batches only, not the data a model is fitted to (its times and normalisation).
_BATCH_SETTINGS = ("data.batch_size", "data.eval_batch_size", "data.num_workers")


def setting_group(key: str) -> str:
    """What a changed setting affects: ``data``, ``batches``, ``model``, ``optimiser`` (which follows the config on
    resume) or ``solver``. The run's seed counts as data: it reaches them through data.seed (the split)."""
    if key == "seed":
        return "data"
    if key in _BATCH_SETTINGS:
        return "batches"
    return "optimiser" if key.startswith("model.optimizer.") else key.partition(".")[0]


def grouped_changes(changes: list[tuple[str, object, object]], first: set[str], per_group: int = 4) -> str:
    """`` Changed since the checkpoint: model: k 16 -> 24; data: ...`` with the ``first`` groups (those that explain
    a refusal) ahead; empty without changes. A refusal listing a data and a model change mixed left the user to
    guess which one it was about."""
    groups: dict[str, list[str]] = {}
    for key, before, now in changes:
        groups.setdefault(setting_group(key), []).append(f"{key} {before} -> {now}")
    order = sorted(groups, key=lambda g: g not in first)  # stable: otherwise in the order of the config
    parts = [f"{g}: {', '.join(groups[g][:per_group])}"
             + (f" and {len(groups[g]) - per_group} more" if len(groups[g]) > per_group else "") for g in order]
    return f" Changed since the checkpoint: {'; '.join(parts)}." if parts else ""


def other_run_settings(saved: dict | None, current: dict) -> list[str]:
    """The checkpoint's ``key=value`` for each setting that makes its run another one than ``current`` (a resolved
    config's seed, data, model, solver): not the training length or the optimiser, which a continued run may
    change. Empty without a saved config."""
    if not saved:
        return []
    # where the data lie (data.source.data_dir follows the launch directory; SLURM jobs stage data elsewhere) and how
    # large the evaluation batches are do not make another run; check_resume_compatible compares the data themselves
    out = [s for s in changed_settings(saved, current) if not s.startswith("model.optimizer.")
           and not s.partition("=")[0].endswith("_dir") and s.partition("=")[0] != "data.eval_batch_size"]
    if saved.get("seed") != current.get("seed") and f"seed={saved.get('seed')}" not in out:
        out.insert(0, f"seed={saved.get('seed')}")
    return out


def ckpt_allows_change() -> bool:
    return os.environ.get("NEURALSDE_ALLOW_RESUME_CHANGE") == "1"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
