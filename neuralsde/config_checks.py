"""Checks of a composed config that run before any work, each naming the option, the value and the fix; and the
named errors that replace Hydra's instantiation wrappers where a constructor met a bad value."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from neuralsde.errors import ConfigError


def not_a_number(node, cause) -> ConfigError | None:
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


def unknown_option(node, cause) -> ConfigError | None:
    """A key added with ``+`` that the target does not take (Hydra's advice for a mistyped key: ``+model.train_step=5``
    ended in "SDEGAN.__init__() got an unexpected keyword argument 'train_step'" under an InstantiationException):
    the option, what the target takes, and the nearest name."""
    import difflib
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
    known = _init_options(cls)
    option = f"{prefix}.{key}" if prefix else key
    other = _other_family_taking(node._target_, key)
    if other is not None and not _typed(option):  # set by an experiment of the other family, not by the user
        family = _family_of(node._target_)
        return ConfigError(f"{option}, set by {_experiment_text()}, is an option of the {other} model, not of "
                           f"{node._target_}: that config is for a {other} model. Fix: choose a {family} experiment "
                           f"({_experiments_of(family)}), or model={other}.")
    if other is not None:  # e.g. the latent SDE's sample_observation_noise on an SDE-GAN, which has no likelihood
        return ConfigError(f"{option} is an option of the {other} model (model={other}) only, not of "
                           f"{node._target_}. Fix: remove +{option}, or train a {other} model (model={other}).")
    near = difflib.get_close_matches(key, known, n=1)
    fix = (f"set {prefix}.{near[0]}=... (an existing key: no +) instead of +{option}" if near else
           f"remove +{option}")
    return ConfigError(f"{option} is not an option of {node._target_} (it takes {known}). Fix: {fix}.")


def _typed(option: str) -> bool:
    """Whether ``option`` (or a section above it) is on the command line; True outside a Hydra run, where whoever
    composed the config chose every key."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    groups = set(HydraConfig.get().runtime.choices)  # model=latent_sde chooses a config, it sets no key
    keys = [k for k in (o.partition("=")[0].lstrip("+~") for o in HydraConfig.get().overrides.task) if k not in groups]
    return any(option == k or option.startswith(f"{k}.") or k.startswith(f"{option}.") for k in keys)


def _experiment_text() -> str:
    from hydra.core.hydra_config import HydraConfig

    experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    return f"experiment={experiment}" if experiment else "its defaults"


def _family_of(target: str) -> str:
    from neuralsde.checkpoints import FAMILY_TARGETS

    return next((family for family, t in FAMILY_TARGETS.items() if t == target), target)


def _experiments_of(family: str) -> str:
    """The experiment configs that choose ``family``'s model (``override /model: <family>...``)."""
    folder = Path(__file__).resolve().parent.parent / "configs" / "experiment"
    names = sorted(p.stem for p in folder.glob("*.yaml") if f"/model: {family}" in p.read_text())
    return ", ".join(f"experiment={n}" for n in names) or f"see configs/experiment/ for one with model: {family}"


def _init_options(cls) -> list[str]:
    import inspect

    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]


def _other_family_taking(target: str, key: str) -> str | None:
    """The other model family (its config name) whose class takes ``key``, when ``target`` is a family's class."""
    from neuralsde.checkpoints import FAMILY_TARGETS  # torch is loaded by now: the model was being built

    if target not in FAMILY_TARGETS.values():
        return None
    for family, other in FAMILY_TARGETS.items():
        if other != target and key in _init_options(hydra.utils.get_class(other)):
            return family
    return None


def check_resolvable(cfg: DictConfig) -> None:
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


def flat_settings(node, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for each leaf of a plain (``to_container``) config; ``prefix`` goes before each key."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node} if prefix else {}
    return {k: v for key, value in node.items() for k, v in flat_settings(value, f"{prefix}{key}.").items()}


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``, read without resolving (``OmegaConf.missing_keys`` resolves, and
    ``${hydra:...}`` fails outside a Hydra job)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        full = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix[:-1]}[{key}]"
        out += [full] if value == "???" else _missing_keys(value, f"{full}.")
    return out


def check_trainer_limits(cfg: DictConfig) -> None:
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


def check_job(cfg: DictConfig) -> None:
    """What a job checks before its work, on a composed config alone: eval.py's and sample.py's options and
    checkpoint file; for training the required options, trainer limits, seed, threads, solver, the data module's
    options (its constructor checks them; no data are loaded), ckpt_path's file and the model's options
    (``training.check_model``). ``train`` runs it first; a sweep runs it on every job before the first
    (``CheckSweepJobs``)."""
    from neuralsde.errors import check_int

    if "model" not in cfg or "data" not in cfg:  # eval.yaml or sample.yaml (task_name may be renamed)
        from neuralsde.commands import check_eval, check_sample

        check = check_eval if "n_samples" in cfg else check_sample if "out" in cfg else check_required
        check(cfg)
        return
    check_required(cfg)
    check_local(cfg)
    check_trainer_limits(cfg)
    check_int("seed", cfg.get("seed"), "e.g. seed=0", minimum=None)
    check_threads(cfg.get("threads"))
    if cfg.get("ckpt_path"):  # read after the data were loaded: a sweep continuing several runs met it per job
        from neuralsde.checkpoints import check_checkpoint_path

        check_checkpoint_path(cfg.ckpt_path)
    from neuralsde.solver import SolverConfig
    from neuralsde.training import check_model, instantiate

    SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
    instantiate(cfg.data)
    check_model(cfg)


def check_local(cfg: DictConfig) -> None:
    """Refuse settings that a ``configs/local/`` file put under ``local:``: without ``# @package _global_`` Hydra
    nests the file there, where nothing reads it, so ``paths: {data_dir: ...}`` in it was silently ignored."""
    local = cfg.get("local")
    keys = list(flat_settings(OmegaConf.to_container(local, resolve=False), "local.")) \
        if isinstance(local, DictConfig) else []
    if not keys:  # no local file, or an empty one
        return
    raise ConfigError(f"the config of the local group (configs/local/, e.g. default.yaml) landed under `local:` "
                      f"({', '.join(keys)}), where nothing reads it, so none of its settings apply. Fix: make "
                      "`# @package _global_` the file's first line (as in configs/experiment/*.yaml); its keys then "
                      "set the options they name, e.g. paths.data_dir.")


def check_threads(n) -> None:
    """``threads``: torch's intra-op threads, or None for torch's default."""
    from neuralsde.errors import check_int

    if n is not None:
        check_int("threads", n, "e.g. threads=1 for small networks on CPU",
                  also=", or null for torch's default (one per core)")


def check_accelerator(cfg: DictConfig) -> None:
    """Refuse a GPU accelerator where torch sees no CUDA device: ``python train.py trainer=ddp`` (or ``trainer=gpu``)
    on a laptop ended in Hydra's wrapper around Lightning's "No supported gpu backend found!", after the data were
    built. Not part of ``check_trainer_limits``: a config naming a GPU is valid, just not on this machine."""
    import torch

    accelerator = (cfg.get("trainer") or {}).get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} (trainer=gpu and trainer=ddp set it) but torch sees no "
                          "CUDA device on this machine. Fix: trainer=ddp_sim for the DDP code path on two CPU "
                          "processes, trainer=cpu, or trainer.accelerator=auto.")
