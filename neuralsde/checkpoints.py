"""Checkpoints: atomic writes, clear errors on bad files, and rebuilding a model from its own config."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from neuralsde.atomic import atomic_write
from neuralsde.data.base import user_path
from neuralsde.errors import CheckpointError, ConfigError, DataError

FAMILY_TARGETS = {"sdegan": "sdegan.module.SDEGAN", "latent_sde": "latent_sde.module.LatentSDE"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place, so a
    process killed while saving leaves the previous checkpoint intact and loadable. A checkpoint already read
    (``preload``) is what its next ``load_checkpoint`` of that unchanged file returns."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: tuple[tuple, dict] | None = None

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_write(path, suffix=".tmp", fsync=True) as f:
            torch.save(checkpoint, f)

    def preload(self, path, checkpoint: dict) -> None:
        """``checkpoint``, read from ``path`` by ``read_checkpoint``, for Lightning's restore: a resume reads the
        file once (a large checkpoint took a load and a CRC pass per check)."""
        self._preloaded = (_file_identity(path), checkpoint)

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        preloaded, self._preloaded = self._preloaded, None  # once: not held through the training
        if preloaded is not None and preloaded[0] is not None and preloaded[0] == _file_identity(path):
            return preloaded[1]
        return super().load_checkpoint(path, *args, **kwargs)


def _file_identity(path) -> tuple | None:
    """The file at ``path`` as (resolved path, mtime, size): a file replaced meanwhile is read again."""
    try:
        path = Path(path).expanduser().resolve()
        stat = path.stat()
    except OSError:  # not a local file: Lightning's own loader reports it
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always ends as the state after training: Lightning rewrites
    it only beside a periodic save, so the steps after the last ``every_n_train_steps`` were in no checkpoint, and
    eval.py, sample.py and a resume read another model than the one the test stage scored. A periodic checkpoint due
    at a step that validates is written after that validation, so a resume from it continues as the run did."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._save_after_validation = False

    def on_train_start(self, trainer, pl_module) -> None:
        # last.ckpt is always this run's: Lightning wrote last-v1.ckpt beside a stale last.ckpt when a run continued
        # in its own directory (a requeue) from a checkpoint whose callback state it could not restore (another
        # checkpoint interval, or a periodic checkpoint saved before the first last.ckpt). Lightning versions a
        # name only when it is not ``last_model_path``, set here after the restore. Runs never share a directory
        # otherwise (resume.refuse_used_run_dir).
        super().on_train_start(trainer, pl_module)
        if self.save_last and self.dirpath is not None:
            self.last_model_path = self.format_checkpoint_name(self._monitor_candidates(trainer),
                                                               self.CHECKPOINT_NAME_LAST)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # A periodic save due at a step whose validation follows waits for it: made here, inside the step, it held the
        # history without that validation, and a resume never ran it (Lightning restarts after the saved batch).
        if self._periodic_save_due(trainer) and validates_after_this_batch(trainer):
            self._save_after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _periodic_save_due(self, trainer) -> bool:
        every = self._every_n_train_steps
        return every >= 1 and trainer.global_step % every == 0 and not self._should_skip_saving_checkpoint(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        # Checkpoint callbacks run after the others (Lightning orders them last): the metric history holds this point.
        # Saved from here, Lightning's restart counts the validation as done, as for its own validation-end saves.
        # (Had Lightning not validated after all, the save waits for the next validation, as its own deferred ones do.)
        if self._save_after_validation and not self._should_skip_saving_checkpoint(trainer):
            self._save_after_validation = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run:
            # Lightning's own on_train_end wrote last.ckpt here despite "checkpointing is suppressed", and
            # resume=auto then continued the newest run's checkpoint: a one-batch smoke test instead of the real run
            return
        # Written even when a periodic save came at this very step: that one was made before Lightning counted the
        # batch and the epoch (a rerun's test row sat one batch early, in epoch 0) and, inside the last batch, before
        # a validation that only the end of training called for (a test-only rerun's history lacked the final point).
        if self.save_last and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


def validates_after_this_batch(trainer) -> bool:
    """Whether Lightning validates once the training batch in progress ends, by its own (private) decision, which a
    restart recomputes on the restored counters. Asked in a callback's ``on_train_batch_end``: before the module's own
    hook stops the run at its last step, so a validation due only to that stop is not counted."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


def run_checkpoint(trainer) -> str | None:
    """The newest checkpoint file this run has written (its checkpoint callback's last, else best), if any."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return path if path and Path(path).is_file() else None


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a file that exists (without reading it: a sweep checks every job's before the first)."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = next((p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()), None)
        hint = f"e.g. {inside}" if inside else "e.g. logs/train/runs/<run>/checkpoints/last.ckpt"
        raise CheckpointError(f"Checkpoint {str(path)!r} is a directory. Fix: pass a .ckpt file, {hint}.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Fix: pass the path of a .ckpt file, e.g. "
                              "logs/train/runs/<run>/checkpoints/last.ckpt.")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file onto the CPU, or raise a CheckpointError saying what is wrong with it."""
    path = check_checkpoint_path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK), older torch a pickle (0x80): a file that begins otherwise is no checkpoint
    # at all (the run's csv/metrics.csv or config.yaml passed by mistake), not a damaged one
    if head and head[:2] != b"PK" and head[:1] != b"\x80":  # an empty file is a cut one (below)
        raise CheckpointError(f"{str(path)!r} is not a checkpoint file (it begins {head!r}, not as torch.save "
                              "writes). Fix: pass a .ckpt file written by `python train.py`, e.g. "
                              "logs/train/runs/<run>/checkpoints/last.ckpt.")
    corrupt = (f"Checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({{}}). Fix: use an earlier "
               "checkpoint of the run, e.g. last.ckpt or a periodic step*.ckpt.")
    try:
        # torch.load does not check the archive's CRCs: a damaged byte in a tensor loaded as silently wrong weights,
        # one in the pickle as an OverflowError traceback
        damaged = _failing_crc(path)
        ckpt = None if damaged else torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, OverflowError) as err:
        raise CheckpointError(corrupt.format(type(err).__name__)) from None
    if damaged:
        raise CheckpointError(corrupt.format(f"{damaged} fails its CRC check"))
    if not isinstance(ckpt, dict) or "neuralsde" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a neuralsde-lab checkpoint (no 'neuralsde' entry). "
                              "Fix: pass a checkpoint written by `python train.py`.")
    family = ckpt["neuralsde"].get("family")
    if family not in FAMILY_TARGETS:
        raise CheckpointError(f"{str(path)!r} holds an unknown model family {family!r}; known: "
                              f"{sorted(FAMILY_TARGETS)}. Fix: update neuralsde-lab or use another checkpoint.")
    return ckpt


def _failing_crc(path: Path) -> str | None:
    """The first member of a zip-format checkpoint whose data fail their CRC check, or None."""
    if not zipfile.is_zipfile(path):
        return None  # torch's legacy format, or not a zip at all: torch.load reports it
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()


def checkpoint_config(ckpt: dict, overrides: list[str] | None = None) -> DictConfig:
    """The training config stored in a checkpoint, with dotlist ``overrides`` (e.g. ``paths.data_dir=...``)."""
    meta = ckpt["neuralsde"]
    saved = meta.get("config_source") or meta.get("config")  # older checkpoints: the resolved config only
    if saved is None:
        raise CheckpointError("The checkpoint holds no training config. Fix: use a checkpoint from `train.py`.")
    cfg = OmegaConf.create(saved)
    _anchor_data_path(cfg, (meta.get("data") or {}).get("cwd"))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(_checked_overrides(cfg, list(overrides))))
    OmegaConf.resolve(cfg)  # overrides reach the values interpolated from them (paths.data_dir -> data.source)
    target = cfg.model.get("_target_")
    family = ckpt["neuralsde"]["family"]
    if target != FAMILY_TARGETS[family]:
        raise CheckpointError(f"The checkpoint holds a {family!r} model but its config builds {target!r}. "
                              "Fix: do not override model._target_ for this checkpoint.")
    return cfg


def _anchor_data_path(cfg: DictConfig, cwd: str | None) -> None:
    """A relative ``data.source.path`` joined to ``cwd``, the directory training read it from: the config keeps the
    path as typed, and eval.py or sample.py started elsewhere looked for the file there and missed it. A path given
    in the overrides replaces it afterwards, relative to the current directory like any on a command line.
    Checkpoints written before the directory was recorded keep their path as it is. ``~`` and ``$VAR`` are expanded
    first, as the data source does: ``~/x.csv`` joined to ``cwd`` became ``<cwd>/~/x.csv``."""
    path = OmegaConf.select(cfg, "data.source.path", default=None, throw_on_resolution_failure=False)
    if cwd and isinstance(path, str) and path and not user_path(path).is_absolute():
        cfg.data.source.path = str(Path(cwd) / user_path(path))


_ABSENT = object()


def _checked_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """``key=value`` overrides of a checkpoint's config, refused where a merge would go wrong silently or far
    from the cause: a key the config lacks (a typo became a keyword argument the data source rejected, or was
    ignored), and a config-group choice (``data=lorenz`` replaced the whole data section by the string
    'lorenz': "Cannot instantiate config of type str"). ``+key=value`` adds a key on purpose."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not sep or not key:
            raise CheckpointError(f"cfg_overrides entry {item!r} is not key=value. Fix: e.g. "
                                  "'cfg_overrides=[\"paths.data_dir=/elsewhere\"]'.")
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        if node is _ABSENT and not add:
            parent, _, leaf = key.rpartition(".")
            siblings = OmegaConf.select(cfg, parent, default=None) if parent else cfg
            known = sorted(siblings.keys()) if isinstance(siblings, DictConfig) else []
            raise CheckpointError(f"cfg_overrides entry {item!r}: the checkpoint's config has no key {key!r}"
                                  + (f" (keys beside it: {known})" if known else "") + ". Fix: correct the key, or "
                                  f"write +{key}={value} to add it.")
        if isinstance(node, DictConfig) and not value.strip().startswith("{"):
            raise CheckpointError(f"cfg_overrides entry {item!r} would replace the whole {key!r} section by "
                                  f"{value!r}: a checkpoint's config groups (data=, model=) cannot be switched, since "
                                  f"its weights were trained on them. Fix: override single keys inside it, e.g. "
                                  f"{key}.<option>=..., or train a new run.")
        out.append(f"{key}={value}")
    return out


def load_state(model: torch.nn.Module, ckpt: dict, overridden: bool = True) -> None:
    """Load weights, refusing a checkpoint whose shapes do not match the model (another size or dataset).
    ``overridden``: the config was changed (``cfg_overrides``); if not, the checkpoint's own config built a model of
    other parameters, i.e. another version of the code wrote it, and "drop size/data overrides" was no fix."""
    own = model.state_dict()
    theirs = ckpt["state_dict"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    mismatched = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{name}: {keys[:3]}" for name, keys in
                           (("missing", missing), ("unexpected", unexpected), ("shape differs", mismatched)) if keys)
        if not overridden:
            raise CheckpointError(f"The checkpoint does not fit the model that its own config builds ({detail}): it "
                                  f"was written by another version of neuralsde-lab (checkpoint format "
                                  f"{ckpt['neuralsde'].get('format')!r}), or the data at its config's path have "
                                  "changed since (e.g. a CSV's channels). Fix: load it with the version of the code "
                                  "that trained it, or point it at the data it was trained on with "
                                  "'cfg_overrides=[\"paths.data_dir=...\"]'.")
        raise CheckpointError(f"The checkpoint does not fit the model built from the config ({detail}). The model "
                              "size or dataset differs from the run that wrote it. Fix: use the checkpoint's own "
                              "config (drop size/data overrides).")
    # load_state_dict copies into the model's own dtype: a run trained under trainer.precision=64-true was rebuilt in
    # float32, and its samples and ELBO (noise drawn in another dtype) were not the training run's. The model takes
    # the checkpoint's dtype first: cast after loading, its float64 weights had been rounded to float32 on the way.
    params = [name for name, _ in model.named_parameters() if name in theirs]
    if params and theirs[params[0]].dtype != own[params[0]].dtype:
        model.to(theirs[params[0]].dtype)
    model.load_state_dict(theirs)


def load_model(path: str | os.PathLike, overrides: list[str] | None = None):
    """Rebuild ``(model, datamodule, cfg)`` from a checkpoint: family and config are read from it."""
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, overrides)
    return (*_with_data(ckpt, cfg, path, overrides), cfg)


def load_sampler(path: str | os.PathLike, overrides: list[str] | None = None):
    """``(model, channel_names, source_times, cfg)`` from a checkpoint, without reading its data: a run trained
    on a cluster is sampled where its data are absent. The weights hold ``times`` and the normaliser, the
    ``neuralsde`` entry the rest; a checkpoint written before that entry held them rebuilds its data."""
    from neuralsde.data.preprocessing import Normalizer
    from neuralsde.training import build_model

    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, overrides)
    data = ckpt["neuralsde"].get("data")
    if data is None:
        model, datamodule = _with_data(ckpt, cfg, path, overrides)
        return model, datamodule.channel_names, datamodule.source_times, cfg
    if overrides:  # else cfg is the checkpoint's own config: nothing to compare
        _refuse_unused_data_overrides(checkpoint_config(ckpt), cfg, overrides)
    state = ckpt["state_dict"]
    model = build_model(cfg, state["times"], Normalizer(state["normalizer.shift"], state["normalizer.scale"]))
    model.data_meta = data
    load_state(model, ckpt, overridden=bool(overrides))
    model.eval()
    return model, list(data["channel_names"]), data["source_times"], cfg


def _refuse_unused_data_overrides(saved: DictConfig, cfg: DictConfig, overrides) -> None:
    """``load_sampler`` reads no data: the model generates on the checkpoint's times, in its units, and the channel
    names and times written come from the checkpoint, so ``data.normalize=none`` changed nothing, silently. Where
    the data lie (``*_dir``, ``path``) is harmless to pass and ignored. ``seed`` is compared too: data.seed follows
    it, and ``changed_settings`` then names ``seed=``, the override given, not ``data.seed=``."""
    from neuralsde.resume import changed_settings

    def compared(c: DictConfig) -> dict:
        return {"seed": c.get("seed"), "data": OmegaConf.to_container(c.data, resolve=True)}

    changed = [s for s in changed_settings(compared(saved), compared(cfg))
               if not s.partition("=")[0].endswith(("_dir", ".path"))]
    if changed:
        raise ConfigError(f"cfg_overrides {list(overrides)} change data settings that sampling does not use (the "
                          f"checkpoint's: {' '.join(changed)}): the checkpoint holds the times, units and channel "
                          "names its model generates in, and sample.py reads no data (its own seed=... sets the "
                          "generator's noise). Fix: drop those overrides.")


def _with_data(ckpt: dict, cfg: DictConfig, path, overrides):
    """``(model, datamodule)`` of a checkpoint, its data rebuilt from ``cfg``."""
    from neuralsde.training import build

    try:
        datamodule, model = build(cfg)
    except DataError as err:  # its fix names a config option, which eval.py and sample.py take in cfg_overrides
        raise DataError(f"{err} The data are rebuilt from the config stored in {str(path)!r}: eval.py and "
                        "sample.py change it with 'cfg_overrides=[\"<option>=<value>\"]', load_model with "
                        "overrides=[...] (a moved data folder: paths.data_dir).") from None
    state = ckpt["state_dict"]
    if "normalizer.shift" in state and "normalizer.scale" in state:  # the data in the model's units
        datamodule.adopt_normalization(state["normalizer.shift"], state["normalizer.scale"])
    load_state(model, ckpt, overridden=bool(overrides))
    model.eval()
    return model, datamodule
