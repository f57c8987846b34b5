"""Hydra callbacks of the entry points (``configs/hydra/default.yaml`` lists them)."""
from __future__ import annotations

import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


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
