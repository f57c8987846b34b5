"""Hydra callbacks: what must happen before Hydra writes into a run's directory (``configs/hydra/default.yaml``
lists them, the refusal first)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from neuralsde.errors import ConfigError
from neuralsde.resume import refuse_used_run_dir


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
        if config.get("resume") == "auto":  # the job finds its own checkpoint (resume.resolve_ckpt_path)
            return
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
