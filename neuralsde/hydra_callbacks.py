"""Hydra callbacks: what must happen before Hydra writes into a run's directory (``configs/hydra/default.yaml``
lists them, the refusal first)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from neuralsde.config_checks import check_job
from neuralsde.errors import OUR_ERRORS, CheckpointError, ConfigError, DataError
from neuralsde.resume import continues_own_run, optimiser_changes, other_run_settings, refuse_used_run_dir


def _saved_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself included) that hold checkpoints."""
    if not root.is_dir():
        return []
    return sorted({ckpt.parent.parent for ckpt in root.rglob("*.ckpt") if ckpt.parent.name == "checkpoints"})


def _refuse(error: ConfigError) -> None:
    """Stop before the run starts. Hydra turns an exception raised in a callback into a warning and goes on, so
    the error is printed as ``reported_plainly`` prints ours, and the process exits with its status 2."""
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(2)


class RefuseUsedRunDir(Callback):
    """Refuse a ``hydra.run.dir`` or ``hydra.sweep.dir`` that already holds a run's checkpoints *before* Hydra
    writes into it. ``neuralsde.training`` refuses the same run too, but only inside the job, after Hydra has
    replaced the old run's ``.hydra/overrides.yaml`` and ``config.yaml`` (and the sweep's ``multirun.yaml``) with
    the refused command's: ``scripts/aggregate.py`` then labelled the old job's metrics with the new overrides."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if continues_own_run(config):
            return  # the job finds its own checkpoint (resume.resolve_ckpt_path)
        try:  # the job's own check, run before Hydra writes: one rule, one message
            refuse_used_run_dir(Path(config.hydra.run.dir), config.get("ckpt_path"))
        except ConfigError as err:
            _refuse(err)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        saved = _saved_runs(sweep_dir)
        if saved and config.get("resume") != "auto":  # resume=auto: each job continues its own
            _refuse(ConfigError(f"hydra.sweep.dir={str(sweep_dir)!r} already holds {len(saved)} job(s) with "
                              f"checkpoints (e.g. {str(saved[0])!r}); this sweep would overwrite their .hydra/ "
                              "records and multirun.yaml, and aggregate.py would then label their metrics with this "
                              "sweep's overrides. Fix: choose a new hydra.sweep.dir (left unset, every sweep gets its "
                              "own timestamped directory), or pass resume=auto to continue those jobs."))


class KeepEarlierHydraRecord(Callback):
    """Runs never overwrite each other, Hydra's record of them included: Hydra writes ``.hydra/`` (the composed
    config and the command-line overrides) into the run directory before the task runs, so a second command given
    the same ``hydra.run.dir`` (refused there, or continuing that run from its checkpoint) replaced the first one's
    record. The earlier record is moved to ``.hydra_before_<time>/`` first. Single runs only: every multirun job
    has its own directory."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            run_dir = OmegaConf.select(config, "hydra.run.dir")
            subdir = OmegaConf.select(config, "hydra.output_subdir")
        except Exception:  # noqa: BLE001  (an unresolvable run directory is Hydra's to report, just after this)
            return
        if run_dir is None or subdir is None:
            return
        record = Path(str(run_dir)) / str(subdir)
        if record.is_dir():
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"
            record.rename(record.with_name(f"{record.name}_before_{stamp}"))


class CheckSweepJobs(Callback):
    """``python train.py -m trainer.max_epochs=-1,1`` trained the first job to the end before the second was
    refused, and a bad value in a SLURM array's last task was found hours later. Hydra composes every job's config
    before launching (which catches a misspelt key or option); here each composed config also goes through the
    checks a single run makes before any work (``config_checks.check_job``), and no two jobs may share an output
    directory (``hydra.sweep.subdir=run`` or ``paths.output_dir=/x``: job 1 was refused after job 0 had trained,
    having replaced job 0's ``.hydra/`` record, so aggregate.py labelled job 0's metrics with job 1's overrides).
    A bad sweep stops before its first job, naming the job. Only for Hydra's basic sweeper, whose jobs are known
    up front (an Optuna study draws its trials as it goes); one more composition per job."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_sweep_direction(config)
        used: dict[str, tuple[int, str]] = {}  # a path a job writes -> the first job that writes it
        for num, overrides, job_cfg in _sweep_jobs(config):
            out = _output_dir(job_cfg)
            with open_dict(job_cfg):
                del job_cfg["hydra"]  # what the task is given (hydra.core.utils.run_job)
            _check_continues_its_own_run(num, overrides, job_cfg, out)
            try:
                check_job(job_cfg)
            except (ConfigError, DataError, CheckpointError) as err:
                _refuse(type(err)(f"sweep job {num} ({overrides}) would fail, so no job was started: {err}"))
            except Exception:  # noqa: BLE001 - not a check's verdict: the job itself reports whatever it is
                pass
            written = {"output directory": out, "out file": _resolved_path(job_cfg, "out")}
            for what, path in written.items():
                if path is not None and path in used:
                    first, first_overrides = used[path]
                    fix = ("leave hydra.sweep.subdir (the job number) and paths.output_dir (Hydra's job directory) at "
                           "their defaults; hydra.sweep.dir chooses where the sweep goes" if what != "out file" else
                           "give each job its own file, e.g. out=samples_${hydra:job.num}.csv")
                    also = f" (with overwrite=true: replace job {first}'s file)" if what == "out file" else ""
                    _refuse(ConfigError(f"sweep jobs {first} ({first_overrides}) and {num} ({overrides}) would share "
                                        f"the {what} {path!r}: job {num} would be refused after job {first} has "
                                        f"run{also}. Fix: {fix}."))
                if path is not None:
                    used[path] = (num, overrides)



class ReportFailedJob(Callback):
    """A sweep goes on past a failed job (Hydra's basic sweeper runs every job, then raises the first failure), but
    nothing said which other jobs had failed, and a failed job's own ``train.log`` did not hold its error: the
    terminal named the first failure alone. Each failed job now logs its number, its overrides and its error as it
    ends, into its log and the terminal."""

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        err = job_return._return_value
        job = config.hydra.job
        trace = None if isinstance(err, OUR_ERRORS) else (type(err), err, err.__traceback__)  # ours name the fix
        logging.getLogger(__name__).error(
            "Sweep job %s (%s) failed: %s: %s (its directory: %s)", job.num, " ".join(job_return.overrides or []),
            type(err).__name__, err, config.hydra.runtime.output_dir, exc_info=trace)


def _check_continues_its_own_run(num: int, overrides: str, job_cfg: DictConfig, out: str | None) -> None:
    """A ``resume=auto`` rerun of a sweep continues each job from the checkpoint in its numbered directory, so a
    rerun whose jobs are numbered otherwise (``-m seed=1 resume=auto`` into a sweep of ``seed=0,1``) met another
    job's run there: a finished one was returned as this job's result, and Hydra relabelled the directory with this
    job's overrides, so aggregate.py reported seed 0's metrics as seed 1's."""
    from neuralsde.checkpoints import read_checkpoint

    if job_cfg.get("resume") != "auto" or job_cfg.get("ckpt_path") or out is None:
        return
    saved = sorted((Path(out) / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not saved:
        return
    try:
        current = {k: OmegaConf.to_container(job_cfg[k], resolve=True) if OmegaConf.is_config(job_cfg[k])
                   else job_cfg[k] for k in ("seed", "data", "model", "solver") if k in job_cfg}
        meta = read_checkpoint(saved[-1])["neuralsde"]
        finished = int(meta.get("train_step", 0)) >= int(job_cfg.model.train_steps)
    except Exception:  # noqa: BLE001 - unresolvable here or unreadable: the job itself reports it
        return
    ckpt_cfg = meta.get("config")
    # a finished run is returned as the job's result: it must have had the job's optimiser settings too
    differ = other_run_settings(ckpt_cfg, current) + (optimiser_changes(ckpt_cfg, current) if finished else [])
    if differ:
        job = f"sweep job {num}" + (f" ({overrides})" if overrides else "")
        mine = " ".join(f"{d.split('=')[0]}={OmegaConf.select(job_cfg, d.split('=')[0])}" for d in differ[:6])
        _refuse(ConfigError(f"{job} would continue the run in {out!r} (resume=auto), but that run was trained with "
                            f"{' '.join(differ[:6])} (this job: {mine}): the job would report that run's metrics "
                            "as its own, under its overrides. Fix: rerun the sweep with its first command's overrides "
                            "in the same order (the job numbers must name the same runs), or give this sweep a new "
                            "hydra.sweep.dir."))


# Logged figures where higher is better (the latent SDE's bound and likelihood): every other one (losses, distances,
# MMD) is lower-better, or best at a value (real_fake_acc: 0.5).
HIGHER_IS_BETTER = ("elbo", "log_lik")


def check_sweep_direction(config: DictConfig) -> None:
    """An Optuna sweep minimises by default, and the latent SDE experiments optimise ``val/elbo``: ``python train.py
    -m experiment=ou_latent_sde hydra/sweeper=optuna ...`` ran every trial and reported the one with the lowest
    ELBO, the worst model, as best. Refused before the first trial."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    metric = config.get("optimized_metric")
    if direction is None or not isinstance(metric, str):
        return
    direction = str(getattr(direction, "name", direction)).lower()  # a string or optuna's Direction enum
    if direction == "minimize" and metric.rpartition("/")[2] in HIGHER_IS_BETTER:
        _refuse(ConfigError(f"optimized_metric={metric} is higher-is-better, but hydra.sweeper.direction=minimize "
                            "(Optuna's default): the sweep would report its worst trial as best. Fix: add "
                            "hydra.sweeper.direction=maximize."))


def _output_dir(job_cfg: DictConfig) -> str | None:
    """Where a sweep job writes: ``paths.output_dir``, by default Hydra's ``hydra.sweep.dir/hydra.sweep.subdir``
    (as ``run_job`` joins them); None where that cannot be worked out before the job runs."""
    try:
        raw = OmegaConf.to_container(job_cfg.paths, resolve=False).get("output_dir")
        if raw == "${hydra:runtime.output_dir}":
            return str(Path(str(job_cfg.hydra.sweep.dir), str(job_cfg.hydra.sweep.subdir)).absolute())
    except Exception:  # noqa: BLE001 - see below
        return None
    return _resolved_path(job_cfg, "paths.output_dir")


def _resolved_path(cfg: DictConfig, key: str) -> str | None:
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=True)
        return None if value is None else str(Path(str(value)).absolute())
    except Exception:  # noqa: BLE001 - e.g. a ${hydra:...} value, known only inside the job; ??? for the job to refuse
        return None


def _sweep_jobs(config: DictConfig):
    """``(job number, its sweep overrides, its composed config)`` for every job of a basic-sweeper multirun, as
    ``BasicSweeper.sweep`` and ``validate_batch_is_legal`` make them; nothing if the jobs cannot be listed (Hydra
    then reports a composition error itself)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return
    try:
        loader = GlobalHydra.instance().config_loader()
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        params += list(config.hydra.overrides.task)
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(params)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        for num, overrides in enumerate(jobs):
            job_cfg = loader.load_sweep_config(master_config=config, sweep_overrides=list(overrides))
            with open_dict(job_cfg):
                job_cfg.hydra.job.num = job_cfg.hydra.job.id = num  # as the launcher sets them
            yield num, " ".join(o for o in overrides if o.partition("=")[0] in swept), job_cfg
    except Exception:  # noqa: BLE001 - Hydra's own validation of the same jobs reports it, with its message
        return
