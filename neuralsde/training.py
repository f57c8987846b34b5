"""train(cfg): seed, instantiate data, model, callbacks, loggers and trainer from the config, fit, test."""
from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from neuralsde.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError, bad_option
from neuralsde.evaluation import print_metrics_table
from neuralsde.solver import SolverConfig

log = logging.getLogger(__name__)
# Errors that already name the option, the value and the fix: shown as they are, without wrappers or tracebacks.
OUR_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDivergedError)


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
        named = _unknown_option(node, cause) or _not_a_number(node, cause)
        if named is not None:
            raise named from None
        raise


def _not_a_number(node, cause) -> ConfigError | None:
    """A constructor's ``float(...)``/``int(...)`` of a word (``model.optimizer.g_lr=abc``: "could not convert string
    to float: 'abc'" under Hydra's wrapper, naming only the section): the key that holds that word."""
    import re

    match = re.search(r"(?:could not convert string to float|invalid literal for int\(\) with base 10): '(.*)'$",
                      str(cause or ""))
    if not isinstance(cause, ValueError) or match is None or not isinstance(node, DictConfig):
        return None
    word = match.group(1)
    prefix = node._get_full_key(None) or ""

    def find(value, path):
        if isinstance(value, dict):
            return [k for key, v in value.items() for k in find(v, f"{path}.{key}" if path else str(key))]
        if isinstance(value, list):
            return [k for i, v in enumerate(value) for k in find(v, f"{path}[{i}]")]
        return [path] if isinstance(value, str) and value.strip() == word.strip() else []

    keys = find(OmegaConf.to_container(node, resolve=True), prefix)
    if not keys:
        return None
    return ConfigError(f"{keys[0]}={word!r} is not valid: expected a number. Fix: set {keys[0]} to a number "
                       "(see its default in configs/).")


def _unknown_option(node, cause) -> ConfigError | None:
    """A key added with ``+`` that the target does not take (Hydra's advice for a mistyped key: ``+model.train_step=5``
    ended in "SDEGAN.__init__() got an unexpected keyword argument 'train_step'" under an InstantiationException):
    the option, what the target takes, and the nearest name."""
    import difflib
    import inspect
    import re

    match = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(cause or ""))
    if not isinstance(cause, TypeError) or match is None or not isinstance(node, DictConfig):
        return None
    cls_name, key = match.groups()
    try:
        cls = hydra.utils.get_class(node._target_)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None
    prefix = node._get_full_key(None) or ""
    if cls.__name__ != cls_name:  # a nested section passed on as keyword arguments, e.g. model.generator
        return ConfigError(f"{cls_name} got an unknown option {key!r} from the {prefix!r} section. Fix: correct or "
                           f"remove {key} in {prefix}.<section> (see the {prefix} config in configs/).")
    known = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]
    near = difflib.get_close_matches(key, known, n=1)
    option = f"{prefix}.{key}" if prefix else key
    fix = (f"set {prefix}.{near[0]}=... (an existing key: no +) instead of +{option}" if near else
           f"remove +{option}")
    return ConfigError(f"{option} is not an option of {node._target_} (it takes {known}). Fix: {fix}.")


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build(cfg: DictConfig):
    """Instantiate ``(datamodule, model)`` from a composed config; the data are set up first because the
    model's shapes and normalisation come from them.

    From Python, compose the config with ``paths.output_dir`` set: inside ``train.py`` it is Hydra's run directory
    (``${hydra:runtime.output_dir}``), which does not exist outside a Hydra job::

        with hydra.initialize_config_dir(config_dir="/abs/path/configs", version_base="1.3"):
            cfg = hydra.compose("train", overrides=["experiment=ou_latent_sde", "paths.output_dir=/tmp/run"])
        datamodule, model = build(cfg)
    """
    _check_resolvable(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    solver = SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
    model = instantiate(cfg.model, times=datamodule.times, normalizer=datamodule.normalizer,
                                    solver=solver, _convert_="all")
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    model.run_config_source = config_source(cfg)
    return datamodule, model


def _check_resolvable(cfg: DictConfig) -> None:
    """A config composed outside a Hydra job (``hydra.compose`` in a notebook) cannot resolve ``${hydra:...}``:
    ``build`` failed after loading the data, with OmegaConf's "HydraConfig was not set" traceback."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        if "HydraConfig was not set" not in str(err):
            raise
        raise ConfigError(f"{getattr(err, 'full_key', 'the config')} needs Hydra's run-time config "
                          "(paths.output_dir is ${hydra:runtime.output_dir}), which exists only inside a Hydra job "
                          "such as `python train.py`. Fix: when composing the config in Python, add an output "
                          "directory to the overrides, e.g. compose('train', overrides=[..., "
                          "'paths.output_dir=/tmp/run']).") from None


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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_option("threads", n, "a positive integer, or null for torch's default (one per core)",
                         "e.g. threads=1 for small networks on CPU")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# What to pass for a required option that a config leaves as ``???``, by key.
REQUIRED_EXAMPLES = {"data.source.path": "data.source.path=/abs/path/file.csv",
                     "ckpt_path": "ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt",
                     "out": "out=samples.csv"}


def check_required(cfg: DictConfig) -> None:
    """Refuse a config with required options left unset (``???``) before any work: OmegaConf's
    ``MissingMandatoryValue`` surfaced where the value was first read, as a traceback (``data=csv`` without a path,
    ``python eval.py`` without ``ckpt_path``)."""
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        examples = " ".join(REQUIRED_EXAMPLES.get(key, f"{key}=<value>") for key in missing)
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required and not set. "
                          f"Fix: pass {examples} on the command line.")


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``, read without resolving (``OmegaConf.missing_keys`` resolves, and
    ``${hydra:...}`` fails outside a Hydra job)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        full = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix[:-1]}[{key}]"
        out += [full] if value == "???" else _missing_keys(value, f"{full}.")
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the configured model; return the final logged metrics as floats."""
    check_required(cfg)
    _check_trainer_limits(cfg)
    with torch_threads(cfg.get("threads")):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    _quiet_known_warnings()
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad_option("seed", seed, "an integer", "e.g. seed=0")
    pl.seed_everything(seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg)
    continuing = _refuse_used_run_dir(out_dir, ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    if cfg.get("extras", {}).get("print_config"):
        log.info("Resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    datamodule, model = build(cfg)
    if ckpt_path is not None:
        _check_resume_compatible(ckpt_path, model)
        _continue_wandb_run(cfg, ckpt_path)
    _group_wandb_sweep(cfg)
    if continuing:
        _set_aside_metrics(out_dir)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=None, verbose=False)
            metrics.update(trainer.callback_metrics)
    finally:
        _finish_wandb(loggers)
    result = {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    tested = {k: v for k, v in result.items() if k.startswith("test/")}
    if tested and trainer.is_global_zero:
        print_metrics_table(tested, f"{model.family}, test split, after {model.steps_taken} steps")
    if trainer.is_global_zero:
        log.info("Output directory: %s", out_dir)
    return result


def _refuse_used_run_dir(out_dir: Path, ckpt_path: str | None) -> bool:
    """Runs never overwrite each other: a run directory given by hand (``hydra.run.dir``) whose run has written
    checkpoints would get its config and metrics replaced, and new checkpoints beside its own (``last-v1.ckpt``).
    Continuing that run from its own checkpoint is allowed (a SLURM job requeued with ``resume=auto``): True.
    Only checkpoints mark a run: a run refused or failed before its first one leaves nothing to protect, and a
    ``config.yaml`` may come from another DDP process of this very run."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # only the first process writes checkpoints
        return False
    if ckpt_path is not None and Path(ckpt_path).expanduser().resolve().is_relative_to(out_dir.resolve()):
        return True
    saved = sorted((out_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if saved:
        raise ConfigError(f"The run directory {str(out_dir)!r} already holds a run with checkpoints. Runs never "
                          "overwrite each other. Fix: choose a new hydra.run.dir (left unset, every run gets its own "
                          f"timestamped directory) or delete the old run; to continue it, pass ckpt_path={saved[-1]} "
                          "(with a larger model.train_steps if it has finished).")
    return False


def _set_aside_metrics(out_dir: Path) -> None:
    """Keep a continued run's earlier ``csv/metrics.csv``, which Lightning's CSV logger deletes when it starts."""
    earlier = out_dir / "csv" / "metrics.csv"
    if earlier.is_file():
        earlier.replace(earlier.with_name(f"metrics_before_{time.strftime('%Y-%m-%d_%H-%M-%S')}.csv"))


def _check_trainer_limits(cfg: DictConfig) -> None:
    """Refuse Lightning's own step limit: under manual optimisation it counts optimiser steps (two per SDE-GAN
    step) and ends the run without the final validation that ``model.train_steps`` gives."""
    max_steps = (cfg.get("trainer") or {}).get("max_steps", -1)
    if max_steps not in (None, -1):
        raise ConfigError(f"trainer.max_steps={max_steps} is not the training length here: Lightning counts "
                          "optimiser steps (the SDE-GAN takes two per training step) and stops before the final "
                          f"validation. Fix: set model.train_steps={max_steps} and leave trainer.max_steps=-1.")
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs", -1)
    if max_epochs not in (None, -1):
        # The training batches are endless (neuralsde.data.batches.StepBatches): an epoch never ends, so
        # trainer.max_epochs=1 ran the whole model.train_steps and Lightning still reported "max_epochs=1 reached".
        raise ConfigError(f"trainer.max_epochs={max_epochs} has no effect here: training batches are drawn "
                          "endlessly, so an epoch never ends, and model.train_steps alone sets the length. Fix: leave "
                          "trainer.max_epochs=-1 and set model.train_steps (one pass over the training set is about "
                          "<training series> / data.batch_size steps).")


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path`` as given, or with ``resume=auto`` the newest checkpoint under ``resume_dir``. Its default: in a
    single run, this task's run directories; in a multirun job, the job's own directory, where none yet means a
    fresh start (a SLURM job requeued after a timeout continues itself, never another run)."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if cfg.get("resume") in (None, False, "none"):
        return None
    if cfg.resume != "auto":
        raise ConfigError(f"resume={cfg.resume!r} is not valid: expected null or 'auto'. Fix: use resume=auto, or "
                          "ckpt_path=PATH for a specific checkpoint.")
    own_job = not cfg.get("resume_dir") and _in_multirun()
    root = Path(cfg.get("resume_dir") or (cfg.paths.output_dir if own_job else
                                          Path(cfg.paths.log_dir) / cfg.task_name / "runs"))
    found = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found and own_job:
        log.info("resume=auto: no checkpoint in this job's directory yet, starting from scratch")
        return None
    if not found:
        raise ConfigError(f"resume=auto found no checkpoint under {str(root)!r}. Fix: set resume_dir=<run directory> "
                          "or pass ckpt_path=PATH.")
    log.info("resume=auto: continuing from %s", found[-1])
    return str(found[-1])


def _check_resume_compatible(ckpt_path: str, model) -> None:
    """Refuse a checkpoint of another family, model size or dataset before Lightning meets it."""
    from neuralsde.checkpoints import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    if ckpt["neuralsde"]["family"] != model.family:
        raise CheckpointError(f"{ckpt_path!r} holds a {ckpt['neuralsde']['family']!r} model but this config builds "
                              f"a {model.family!r} model. Fix: resume with the experiment that wrote it.")
    done = int(ckpt["neuralsde"].get("train_step", 0))
    if done >= model.train_steps:
        raise ConfigError(f"{ckpt_path!r} has already trained {done} steps and model.train_steps={model.train_steps}: "
                          f"nothing is left to train. Fix: raise model.train_steps (e.g. model.train_steps="
                          f"{2 * done}) to train further, or evaluate it with python eval.py ckpt_path={ckpt_path}.")
    own, theirs = model.state_dict(), ckpt["state_dict"]
    differ = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    data_changed = "times" in theirs and (theirs["times"].shape != own["times"].shape
                                          or not torch.equal(theirs["times"], own["times"]))
    for key in ("normalizer.shift", "normalizer.scale"):
        if key in theirs and (theirs[key].shape != own[key].shape or not torch.allclose(theirs[key], own[key])):
            data_changed = True
    if (differ or data_changed) and not ckpt_allows_change():
        what = f"model size differs ({differ[:3]})" if differ else "the dataset differs (times or normalisation)"
        changed = _changed_settings(ckpt["neuralsde"].get("config"), model.run_config)
        fix = (f"resume with the checkpoint's values of the settings that differ: {' '.join(changed[:6])}"
               if changed else
               "resume with the config of the run that wrote it")
        raise CheckpointError(f"Cannot resume from {ckpt_path!r}: {what}. Fix: {fix}, or set "
                              "NEURALSDE_ALLOW_RESUME_CHANGE=1 to allow it deliberately.")


def _changed_settings(saved: dict | None, current: dict | None) -> list[str]:
    """``key=value`` (the checkpoint's value) for each data and model setting that differs now: "the dataset
    differs" alone left the user to find that data.source.n_paths had been left at its default."""
    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    if not saved or not current:
        return []
    out = []
    for section in ("data", "model"):
        before, now = flat(saved.get(section) or {}, f"{section}."), flat(current.get(section) or {}, f"{section}.")
        out += [f"{k}={before[k]}" for k in before if k in now and before[k] != now[k] and k != "model.train_steps"]
    return out


def ckpt_allows_change() -> bool:
    return os.environ.get("NEURALSDE_ALLOW_RESUME_CHANGE") == "1"


def _continue_wandb_run(cfg: DictConfig, ckpt_path: str) -> None:
    from omegaconf import open_dict

    from neuralsde.checkpoints import read_checkpoint

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = read_checkpoint(ckpt_path)["neuralsde"].get("wandb_id")
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
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise
        log.error("%s: %s", type(err).__name__, err)
        raise SystemExit(2) from None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def _group_wandb_sweep(cfg: DictConfig) -> None:
    """In a multirun every job is its own wandb run, grouped by the sweep directory's name."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("group"):
        return
    if _in_multirun():
        hc = HydraConfig.get()
        with open_dict(cfg):
            # Two path parts: results/cpu/table_a and results/paper/table_a must not share a group.
            cfg.logger.wandb.group = "/".join(Path(hc.sweep.dir).parts[-2:])
            cfg.logger.wandb.name = hc.job.override_dirname or f"job{hc.job.num}"


def metric_for_sweep(metrics: dict[str, float], name: str | None, sweeping: bool | None = None) -> float | None:
    """``metrics[name]`` for a sweeper. A missing metric fails a multirun (the sweeper needs a value) but only
    warns in a single run, whose training is done and saved by then. ``sweeping`` None: ask Hydra."""
    if not name:
        return None
    if name in metrics:
        return metrics[name]
    message = (f"optimized_metric={name!r} was not logged. Logged metrics: {sorted(metrics)}. Fix: name one of "
               "them, or let validation run (trainer.limit_val_batches > 0).")
    if sweeping is None:
        sweeping = _in_multirun()
    if sweeping:
        raise ConfigError(message)
    log.warning(message)
    return None


def _finish_wandb(loggers: list) -> None:
    # Multirun sweeps start every job in one process: each job must close its own wandb run.
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb
        wandb.finish()
