"""train(cfg): seed, instantiate data, model, callbacks, loggers and trainer from the config, fit, test."""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from neuralsde.checkpoints import AtomicCheckpointIO, read_checkpoint
from neuralsde.config_checks import (
    check_accelerator,
    check_job,
    check_resolvable,
    check_threads,
    not_a_number,
    unknown_option,
)
from neuralsde.distributed import ddp_options
from neuralsde.errors import OUR_ERRORS
from neuralsde.evaluation import print_metrics_table
from neuralsde.resume import (
    check_resume_compatible,
    finished_run_metrics,
    in_multirun,
    put_back_metrics,
    refuse_used_run_dir,
    resolve_ckpt_path,
    set_aside_metrics,
)
from neuralsde.solver import SolverConfig
from neuralsde.summary import summary_callbacks

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
        if isinstance(cause, OUR_ERRORS) or (
                isinstance(cause, ValueError) and "Fix" in str(cause)):
            raise cause from None
        named = unknown_option(node, cause) or not_a_number(node, cause)
        if named is not None:
            raise named from None
        raise


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build(cfg: DictConfig, *, model_checked: bool = False):
    """Instantiate ``(datamodule, model)`` from a composed config; the data are set up first because the
    model's shapes and normalisation come from them (the model's own options are checked before: ``check_model``,
    unless ``model_checked``, as ``train`` has by ``check_job``).

    From Python, compose the config with ``paths.output_dir`` set: inside ``train.py`` it is Hydra's run directory
    (``${hydra:runtime.output_dir}``), which does not exist outside a Hydra job::

        with hydra.initialize_config_dir(config_dir="/abs/path/configs", version_base="1.3"):
            cfg = hydra.compose("train", overrides=["experiment=ou_latent_sde", "paths.output_dir=/tmp/run"])
        datamodule, model = build(cfg)
    """
    check_resolvable(cfg)
    if not model_checked:
        check_model(cfg)  # before the data, whose first preparation may download for minutes
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule.times, datamodule.normalizer)
    # what sample.py needs of the data, saved in checkpoints so that sampling works where the data are absent; and
    # the directory a relative data path was read from, for eval.py started elsewhere (checkpoints.checkpoint_config)
    model.data_meta = {"channel_names": list(datamodule.channel_names),
                       "source_times": datamodule.source_times.clone(), "cwd": os.getcwd()}
    return datamodule, model


def build_model(cfg: DictConfig, times, normalizer):
    """The model of ``cfg`` on ``times`` with ``normalizer``: from the data (``build``) or from a checkpoint."""
    model = _instantiate_model(cfg, times, normalizer)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    model.run_config_source = config_source(cfg)
    return model


def _instantiate_model(cfg: DictConfig, times, normalizer):
    solver = SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
    return instantiate(cfg.model, times=times, normalizer=normalizer, solver=solver, _convert_="all")


def check_model(cfg: DictConfig) -> None:
    """Every check of ``cfg.model`` that needs no data (unknown options, choices, sizes, learning rates, option
    combinations), made by building the model on a stand-in grid of two times and one channel and dropping it. What
    needs the data's shape waits for the real build: ``solver.dt`` against the grid (any positive ``dt`` reaches
    the stand-in's last time, so it refuses nothing that real data would accept). Its warnings are dropped: the
    real build gives them, and a run showed each twice (a filter set in between resets Python's once-per-place
    record)."""
    from neuralsde.data.preprocessing import Normalizer

    # the run's weights are drawn as if it had not been built
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _instantiate_model(cfg, torch.arange(2.0), Normalizer(torch.zeros(1), torch.ones(1)))


def config_source(cfg: DictConfig) -> dict:
    """``cfg`` with its interpolations kept, except under ``paths`` (Hydra's run-time values, resolved): what a
    checkpoint needs so that ``eval.py``'s ``cfg_overrides=["paths.data_dir=..."]`` reaches every value derived
    from it, as the same override does on the command line."""
    source = OmegaConf.to_container(cfg, resolve=False)
    if "paths" in cfg:
        source["paths"] = OmegaConf.to_container(cfg.paths, resolve=True)
    return source


def _quiet_known_warnings() -> None:
    # Checkpoints after the optimiser step are what resume needs; the pytree notice is Lightning-internal.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    # A resumed run writes to its own new directory by design; Lightning warns that the old one is not reused.
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    # Only a run continued in its own directory meets it, and its earlier metrics.csv has been moved aside first.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _no_cloud_tip not in rank_zero.filters:
        rank_zero.addFilter(_no_cloud_tip)


def _no_cloud_tip(record: logging.LogRecord) -> bool:
    """Drop Lightning's advertisement for its cloud logger at every start: runs here log offline."""
    return "litlogger" not in str(record.msg)


@contextmanager
def torch_threads(n):
    """torch's intra-op threads set to ``n`` inside the block (None: torch's default), restored after it."""
    if n is None:
        yield
        return
    check_threads(n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the configured model; return the final logged metrics as floats."""
    # every check that needs no data; a sweep runs it on each job before the first (hydra_callbacks.CheckSweepJobs)
    check_job(cfg)
    # here, not in check_job: a sweep's launcher (a SLURM login node) need not have the jobs' GPUs
    check_accelerator(cfg)
    with torch_threads(cfg.get("threads")):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    _quiet_known_warnings()
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg)
    # read once: the checks, the wandb run id and Lightning's restore take this copy
    ckpt = read_checkpoint(ckpt_path) if ckpt_path is not None else None
    finished = finished_run_metrics(cfg, ckpt_path, ckpt, partial(_test_finished_run, cfg, ckpt_path, ckpt))
    if finished is not None:  # resume=auto on a finished run (a sweep rerun to finish its other jobs)
        return finished
    continuing = refuse_used_run_dir(out_dir, ckpt_path)
    datamodule, model, trainer, loggers, _ = _set_up(cfg, ckpt_path, ckpt, continuing, fitting=True)
    del ckpt  # Lightning's restore lets go of it; not held here through the training
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=None, verbose=False)
            metrics.update(trainer.callback_metrics)
    finally:
        _finish_wandb(loggers)
    result = _as_floats(metrics)
    _report(trainer, model, out_dir, result)
    return result


def _test_finished_run(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> dict[str, float]:
    """The test stage of a run that trained to the end (``ckpt_path``, its own) but was stopped in its test stage:
    as training runs it after the fit, logged into the run's own loggers, its earlier metrics.csv rows kept."""
    out_dir = Path(cfg.paths.output_dir)
    datamodule, model, trainer, loggers, kept = _set_up(cfg, ckpt_path, ckpt, continuing=True, fitting=False)
    # Lightning restores the loop counters only to fit: the test row was logged at step 0 of epoch 0, where the
    # uninterrupted run logs it after its last training step (and a continued wandb run had logged past step 0)
    if "loops" in ckpt:
        trainer.fit_loop.load_state_dict(ckpt["loops"]["fit_loop"])
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    finally:
        _finish_wandb(loggers)
        if trainer.is_global_zero:
            put_back_metrics(out_dir, kept)
    result = {k: v for k, v in _as_floats(trainer.callback_metrics).items() if k.startswith("test/")}
    _report(trainer, model, out_dir, result)
    return result


def _set_up(cfg: DictConfig, ckpt_path: str | None, ckpt: dict | None, continuing: bool, fitting: bool):
    """The run directory, data, model, loggers and trainer of ``cfg``: ``(datamodule, model, trainer, loggers,
    where the earlier metrics.csv was set aside)``. ``fitting``: ``ckpt`` is to be trained further (checked for it)."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP: the other processes would rewrite it while a reader may be reading it
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    datamodule, model = build(cfg, model_checked=True)  # train's check_job built the stand-in model
    if ckpt is not None:
        if fitting:
            check_resume_compatible(ckpt_path, model, ckpt)
        _continue_wandb_run(cfg, ckpt)
    _group_wandb_sweep(cfg)
    kept = set_aside_metrics(out_dir) if continuing and rank_zero_only.rank == 0 else None
    callbacks = _instantiate_all(cfg.get("callbacks"))
    # the model summary without Lightning's FLOPs, all zeros here; Lightning, told its own is on, says on every start
    # that it found another
    summary = summary_callbacks(cfg.trainer, callbacks)
    loggers = _instantiate_all(cfg.get("logger"))
    # DDP's find_unused_parameters as this model needs it
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks + summary, logger=loggers or False,
                                      **({"enable_model_summary": False} if summary else {}),
                                      **ddp_options(cfg.trainer, model))
    if ckpt is not None and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.preload(ckpt_path, ckpt)
    # The whole resolved config as the run's hyperparameters: Lightning logs only the module's (network sizes,
    # solver, optimiser), so a wandb run's config had no seed, dataset, batch size or trainer to filter runs by.
    # trainer.loggers: under fast_dev_run Lightning's no-op stand-ins, so no wandb run is started for it.
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # printed once everything is built and checked (a bad value's one-line error is not buried under ~140 lines),
    # by one process under DDP
    if cfg.get("extras", {}).get("print_config") and trainer.is_global_zero:
        log.info("Resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return datamodule, model, trainer, loggers, kept


def _as_floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def _report(trainer: pl.Trainer, model, out_dir: Path, result: dict[str, float]) -> None:
    """The test table, the run directory and the checkpoint to evaluate, printed by one process."""
    tested = {k: v for k, v in result.items() if k.startswith("test/")}
    if tested and trainer.is_global_zero:
        print_metrics_table(tested, f"{model.family}, test split, after {model.steps_taken} "
                            f"step{'' if model.steps_taken == 1 else 's'}")
    if trainer.is_global_zero:
        log.info("Output directory: %s", out_dir)
        # the path eval.py and sample.py take, so that it need not be pieced together from the table in the README
        last = getattr(trainer.checkpoint_callback, "last_model_path", "")
        if last and Path(last).is_file():
            log.info("Checkpoint: %s (python eval.py ckpt_path=%s)", last, last)


def _continue_wandb_run(cfg: DictConfig, ckpt: dict) -> None:
    from omegaconf import open_dict

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = ckpt["neuralsde"].get("wandb_id")
    if run_id:
        with open_dict(cfg):
            cfg.logger.wandb.id = run_id
            cfg.logger.wandb.resume = "allow"


@contextmanager
def reported_plainly():
    """Around a command's work: an error of ours already names the problem and the fix, so a single run prints
    that line alone and exits with status 2 instead of a traceback above it (``HYDRA_FULL_ERROR=1`` keeps the
    traceback; a multirun keeps Hydra's handling, where a failed job is the sweeper's business)."""
    try:
        yield
    except OUR_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or in_multirun():
            raise
        log.error("%s: %s", type(err).__name__, err)
        raise SystemExit(2) from None


def _group_wandb_sweep(cfg: DictConfig) -> None:
    """In a multirun every job is its own wandb run, grouped by the sweep directory's name."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("group"):
        return
    if in_multirun():
        hc = HydraConfig.get()
        with open_dict(cfg):
            # Two path parts: results/cpu/table_a and results/paper/table_a must not share a group.
            cfg.logger.wandb.group = "/".join(Path(hc.sweep.dir).parts[-2:])
            cfg.logger.wandb.name = hc.job.override_dirname or f"job{hc.job.num}"


def _finish_wandb(loggers: list) -> None:
    # Multirun sweeps start every job in one process: each job must close its own wandb run.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb
        wandb.finish()
