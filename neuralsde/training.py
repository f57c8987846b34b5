"""train(cfg): seed, instantiate data, model, callbacks, loggers and trainer from the config, fit, test."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from hydra.errors import InstantiationException

from neuralsde.errors import CheckpointError, ConfigError, DataError
from neuralsde.solver import SolverConfig

log = logging.getLogger(__name__)


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` that re-raises the framework's own errors unwrapped, so the user reads
    the option, the value and the fix rather than Hydra's wrapper."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ConfigError, DataError, CheckpointError)) or (
                isinstance(cause, ValueError) and "Fix" in str(cause)):
            raise cause from None
        raise


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build(cfg: DictConfig):
    """Instantiate ``(datamodule, model)`` from a composed config; the data are set up first because the
    model's shapes and normalisation come from them."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    solver = SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
    model = instantiate(cfg.model, times=datamodule.times, normalizer=datamodule.normalizer,
                                    solver=solver, _convert_="all")
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, model


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the configured model; return the final logged metrics as floats."""
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    if cfg.get("extras", {}).get("print_config"):
        log.info("Resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    datamodule, model = build(cfg)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=None, verbose=False)
            metrics.update(trainer.callback_metrics)
    finally:
        _finish_wandb(loggers)
    result = {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    log.info("Output directory: %s", out_dir)
    return result


def metric_for_sweep(metrics: dict[str, float], name: str | None) -> float | None:
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged. Logged metrics: {sorted(metrics)}. "
                          "Fix: name one of them.")
    return metrics[name]


def _finish_wandb(loggers: list) -> None:
    # Multirun sweeps start every job in one process: each job must close its own wandb run.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb
        wandb.finish()
