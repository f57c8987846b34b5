"""What a training job returns to a Hydra sweeper: ``optimized_metric``'s value, for a sweeper that reads it."""
from __future__ import annotations

import logging
import math

from omegaconf import ListConfig

from neuralsde.errors import ConfigError, TrainingDivergedError
from neuralsde.resume import in_multirun

log = logging.getLogger(__name__)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_ASK_HYDRA = "ask Hydra"


def sweep_direction() -> str | None:
    """``"minimize"`` or ``"maximize"`` in a job of a sweeper that reads its return value (Optuna); None in a single
    run or under Hydra's basic sweeper, which ignores it."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return None
    sweeper = HydraConfig.get().sweeper
    if sweeper.get("_target_") == BASIC_SWEEPER:
        return None
    direction = sweeper.get("direction") or "minimize"
    if isinstance(direction, (list, tuple, ListConfig)):  # several objectives: optimized_metric is the first
        direction = direction[0]
    return str(getattr(direction, "name", direction)).lower()  # a string or optuna's StudyDirection


def worst_value(direction: str) -> float:
    return -math.inf if direction == "maximize" else math.inf


def metric_for_sweep(metrics: dict[str, float], name: str | None,
                     direction: str | None = _ASK_HYDRA) -> float | None:
    """``metrics[name]`` for the sweeper. ``direction``: the sweeper's (see ``sweep_direction``, asked by default),
    None where nothing reads the value. A missing metric fails the job only where a sweeper reads it; elsewhere
    (a single run, a ``-m`` grid) the training is done and saved, so it warns. A NaN or infinite value is returned as
    the worst value for the direction: optuna refuses NaN (the Optuna sweeper then stopped the whole study on a
    ValueError of its own), and −inf would make a broken trial the best of a minimisation."""
    if not name:
        return None
    if direction == _ASK_HYDRA:
        direction = sweep_direction()
    if name not in metrics:
        message = (f"optimized_metric={name!r} was not logged. Logged metrics: {sorted(metrics)}. Fix: name one of "
                   "them, or let validation run (trainer.limit_val_batches > 0).")
        if direction is not None:
            raise ConfigError(message)
        log.warning(message)
        return None
    value = metrics[name]
    if direction is not None and not math.isfinite(value):
        log.warning("optimized_metric %s=%s is not finite: reported to the sweeper as %s, the worst value for "
                    "direction=%s, so that the search goes on and learns to avoid these settings.",
                    name, value, worst_value(direction), direction)
        return worst_value(direction)
    return value


def train_for_sweep(cfg) -> float | None:
    """Train ``cfg`` and return ``optimized_metric`` for the sweeper. A trial whose loss became NaN or infinite
    returns the worst value for the direction where a sweeper reads it, so that one diverged learning rate does not
    end the study (``max_failure_rate: 0.0`` stopped ``hparams_search=ou_optuna`` at its first diverged trial,
    without ``optimization_results.yaml``); anywhere else (a single run, a ``-m`` grid) the job fails as before."""
    from neuralsde.training import train

    name, direction = cfg.get("optimized_metric"), sweep_direction()
    try:
        metrics = train(cfg)
    except TrainingDivergedError as err:
        if direction is None or not name:
            raise
        log.warning("Training diverged (TrainingDivergedError: %s): reported to the sweeper as %s=%s, the worst "
                    "value for direction=%s.", err, name, worst_value(direction), direction)
        return worst_value(direction)
    return metric_for_sweep(metrics, name, direction)
