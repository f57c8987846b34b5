"""What `eval.py` and `sample.py` do, as functions of their configs."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from neuralsde.checkpoints import check_checkpoint_path, load_model, load_sampler
from neuralsde.errors import ConfigError, bad_option, check_int
from neuralsde.evaluation import check_n_samples, evaluate, print_metrics_table
from neuralsde.metrics import check_metric_names
from neuralsde.metrics.suite import make_options

log = logging.getLogger(__name__)
OUTPUT_FORMATS = (".csv", ".npz", ".parquet")
# parquet schema metadata key of sample.py's record (JSON: checkpoint, seed, observation_noise); the npz has arrays,
# a CSV a JSON file beside it (csv_sidecar)
SAMPLE_RECORD_KEY = b"neuralsde.sample"
# The options of configs/eval.yaml and configs/sample.yaml: anything else was added with `+key=...`.
EVAL_KEYS = {"task_name", "ckpt_path", "cfg_overrides", "metrics", "n_samples", "seed", "options", "paths"}
SAMPLE_KEYS = {"task_name", "ckpt_path", "n", "out", "overwrite", "seed", "batch_size", "cfg_overrides",
               "observation_noise", "paths"}


def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Full metric suite on a checkpoint; prints a table and writes ``metrics.json`` in the run directory."""
    from neuralsde.training import torch_threads

    names, n_samples = check_eval(cfg)
    out = Path(cfg.paths.output_dir)
    _refuse_earlier_metrics(out)  # before any work: the suite takes minutes
    model, datamodule, train_cfg = load_model(cfg.ckpt_path, list(cfg.cfg_overrides))
    # checked in eval.py's own command-line form, before any sampling
    options = make_options(where="+options.", **metric_options(train_cfg, cfg.options))
    # The run's own CPU threads (ou_sdegan: 1), as its test stage had: at torch's default of one per core the
    # suite took 245 s instead of 29 s on a busy 2-core machine. 'cfg_overrides=["threads=2"]' changes it.
    with torch_threads(train_cfg.get("threads")):
        values, paths = evaluate(model, datamodule, metrics=names, n_samples=n_samples, seed=int(cfg.seed),
                             options=options, reference=True, progress=True)
        # The latent SDE's ELBO (per path, nats), its headline figure, on the whole test split as its test stage has it
        elbo = model.split_elbo(datamodule.test_dataloader()) if hasattr(model, "split_elbo") else {}
    values = {f"test/{k}": v for k, v in {**elbo, **values}.items() if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    ckpt = str(Path(cfg.ckpt_path).expanduser().resolve())  # the file, wherever the JSON is read from
    # n_samples is at most: a test split smaller than it (OU's 819, lobster's 10 windows) is compared whole, and
    # metrics.json said 1024 whatever was compared
    n_compared = len(paths["real_test"])
    used = {"n_samples": n_samples, "n_compared": n_compared, "seed": int(cfg.seed),
            "options": dataclasses.asdict(options)}  # all of them
    if hasattr(model, "sample_observation_noise"):  # which samples the latent SDE's metrics compared
        used["sample_observation_noise"] = model.sample_observation_noise
    _refuse_earlier_metrics(out)  # another evaluation may have finished in this directory meanwhile
    with open(out / "metrics.json", "x") as f:  # "x": never replaces a file
        f.write(json.dumps({"checkpoint": ckpt, "family": model.family, **used, "metrics": values}, indent=2))
    # the ELBO rests on every test path, not on the n_compared that the sample metrics do
    whole = f"; the ELBO on all {len(datamodule.test_dataloader().dataset)} test paths" if elbo else ""
    noisy = " with observation noise" if used.get("sample_observation_noise") else ""
    print_metrics_table(values, f"{model.family}: {cfg.ckpt_path}, {n_compared} real paths and as many generated"
                        f"{noisy}{whole}")
    log.info("Wrote %s", out / "metrics.json")
    return values


def check_eval(cfg: DictConfig) -> tuple[tuple[str, ...], int]:
    """eval.py's checks before any work (a sweep makes them on every job before the first): the metric names and
    the path count, and the checkpoint file."""
    from neuralsde.config_checks import check_required

    check_required(cfg)
    _refuse_added_keys(cfg, EVAL_KEYS, "eval.py")
    names = check_metric_names(cfg.metrics)
    n_samples = check_n_samples(cfg.n_samples, "n_samples")
    check_checkpoint_path(cfg.ckpt_path)
    return names, n_samples


def _refuse_added_keys(cfg: DictConfig, known: set[str], command: str) -> None:
    """A key added with ``+`` was silently ignored: Hydra answers ``data=stocks`` with "use +data=stocks", and
    ``python eval.py ckpt_path=... +data=stocks`` then scored the checkpoint's own data as if nothing was said."""
    added = sorted(set(cfg.keys()) - known)
    if added:
        raise ConfigError(f"{command} has no option {', '.join(added)} (given with +): the model, data and training "
                          f"options are the checkpoint's. Fix: drop it, or change the checkpoint's config with e.g. "
                          f"'cfg_overrides=[\"data.eval_batch_size=256\"]'; {command}'s own options: "
                          f"{', '.join(sorted(known - {'task_name', 'paths'}))}.")


def _refuse_earlier_metrics(out: Path) -> None:
    """Runs never overwrite each other: an evaluation directory given by hand (``hydra.run.dir``) that already
    holds a ``metrics.json`` is refused."""
    if (out / "metrics.json").exists():
        raise ConfigError(f"{str(out / 'metrics.json')!r} already holds an earlier evaluation. Runs never overwrite "
                          "each other. Fix: choose a new hydra.run.dir (left unset, every evaluation gets its own "
                          "timestamped directory) or move the earlier metrics.json away.")


def metric_options(train_cfg: DictConfig, overrides) -> dict:
    """The metric options the run was trained with (its experiment's kernel and path scale: at path scale 1
    air quality's real-vs-real signature MMD² is -9e3), updated by ``overrides`` (eval.py's ``options``)."""
    metrics = OmegaConf.select(train_cfg, "callbacks.metrics.options", default=None)
    options = OmegaConf.to_container(metrics, resolve=True) if metrics is not None else {}
    options.update(OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig)
                   else dict(overrides or {}))
    return options


def csv_sidecar(path: Path) -> Path:
    """The JSON file beside a CSV of samples that holds their record (``samples.csv`` -> ``samples.csv.json``): a
    CSV has no place for metadata but comment lines, which ``pd.read_csv`` would read as rows."""
    return path.with_name(f"{path.name}.json")


def check_output(out: str, overwrite: bool) -> Path:
    path = Path(out).expanduser()
    if path.suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"out={out!r} has extension {path.suffix!r}; expected one of {OUTPUT_FORMATS}. "
                          "Fix: name the file e.g. samples.csv, samples.npz or samples.parquet.")
    if path.is_dir():
        raise ConfigError(f"out={out!r} is a directory. Fix: name a file, e.g. out={path / ('samples' + path.suffix)}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"out={out!r} already exists and would be overwritten. Fix: choose another file name or "
                          "pass overwrite=true.")
    if path.suffix == ".csv" and csv_sidecar(path).exists() and not overwrite:
        raise ConfigError(f"out={out!r} would overwrite {str(csv_sidecar(path))!r}, where sample.py records what drew "
                          "a CSV's paths. Fix: choose another file name or pass overwrite=true.")
    return path


def run_sample(cfg: DictConfig) -> Path:
    """Write ``cfg.n`` generated paths with their timestamps, in data units, to ``cfg.out``."""
    from neuralsde.training import torch_threads

    path = check_sample(cfg)
    # the data are not read (a checkpoint holds what sampling needs of them), so a laptop without them samples
    model, channel_names, source_times, train_cfg = load_sampler(cfg.ckpt_path, list(cfg.cfg_overrides))
    set_observation_noise(model, cfg.get("observation_noise"), cfg.ckpt_path)
    with torch_threads(train_cfg.get("threads")):  # the run's own CPU threads, as in run_eval
        paths = _sample_with_progress(model, int(cfg.n), int(cfg.batch_size), int(cfg.seed))
    # what drew the paths, kept with them: noisy and noiseless files of one checkpoint look alike otherwise
    record = {"checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()), "seed": int(cfg.seed),
              "observation_noise": bool(getattr(model, "sample_observation_noise", False))}
    # the model's time channel -> the data's own times, in float64 (a CSV's Unix timestamps do not fit a float32)
    write_paths(path, paths, channel_names, times=source_times, record=record)
    log.info("Wrote %d paths to %s", len(paths), path)
    return path


def check_sample(cfg: DictConfig) -> Path:
    """sample.py's checks before any work (a sweep makes them on every job before the first); the output file."""
    from neuralsde.config_checks import check_required

    check_required(cfg)
    _refuse_added_keys(cfg, SAMPLE_KEYS, "sample.py")
    # n=abc was a bare int() ValueError, batch_size=0 "range() arg 3 must not be zero"
    check_int("n", cfg.n, "e.g. n=1000", also=" (number of paths)")
    check_int("batch_size", cfg.batch_size, "e.g. batch_size=1024")
    check_int("seed", cfg.seed, "e.g. seed=0", minimum=None)
    noise = cfg.get("observation_noise")
    if noise is not None and not isinstance(noise, bool):
        raise bad_option("observation_noise", noise, "true, false or null (the checkpoint's "
                         "model.sample_observation_noise)", "e.g. observation_noise=true")
    path = check_output(cfg.out, bool(cfg.overwrite))
    check_checkpoint_path(cfg.ckpt_path)
    return path


def set_observation_noise(model, noise: bool | None, ckpt_path) -> None:
    """sample.py's ``observation_noise`` on the loaded model (None: the checkpoint's own setting). Only a latent SDE
    has an observation model: ``true`` for an SDE-GAN is refused (its samples are its generator's output)."""
    if noise is None:
        return
    if not hasattr(model, "sample_observation_noise"):
        if noise:
            raise ConfigError(f"observation_noise=true, but {str(ckpt_path)!r} holds a {model.family!r} model, which "
                              "has no observation model to draw noise from (only the latent SDE has a likelihood). "
                              "Fix: drop observation_noise for this checkpoint.")
        return
    model.sample_observation_noise = noise


def _sample_with_progress(model, n: int, batch_size: int, seed: int) -> torch.Tensor:
    from rich.progress import Progress

    gen = torch.Generator().manual_seed(seed)
    chunks = []
    with Progress(transient=True) as progress, torch.no_grad():
        task = progress.add_task("sampling", total=n)
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            chunks.append(model.sample_data_units(size, generator=gen, batch_size=size))
            progress.advance(task, size)
    return torch.cat(chunks)


def write_paths(path: Path, paths: torch.Tensor, channel_names: list[str], times: torch.Tensor | None = None,
                record: dict | None = None) -> None:
    """``paths`` ``(n, T, 1 + C)`` to a file; the time channel becomes the ``time`` column/array, or ``times``
    ``(T,)`` (the data's own times, kept in their dtype) in its place where given.

    csv and parquet are long tables with columns ``path, time, <channels>``; npz holds ``times (n, T)``,
    ``values (n, T, C)`` and ``channels``. ``record`` (JSON-able scalars, e.g. checkpoint, seed,
    observation_noise) goes into the npz as one 0-d array per key, into the parquet schema metadata as JSON
    under ``SAMPLE_RECORD_KEY`` and beside a CSV as the JSON file ``csv_sidecar(path)``. Written to temporary names
    first, then renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    arr = paths.numpy()
    stamps = arr[..., 0] if times is None else np.broadcast_to(times.cpu().numpy(), arr.shape[:2])  # (n, T)
    if path.suffix == ".npz":
        extra = {k: np.asarray(v) for k, v in (record or {}).items()}  # 0-d arrays: np.load needs no pickle
        np.savez(tmp, times=stamps, values=arr[..., 1:], channels=np.array(channel_names), **extra)
    else:
        import pandas as pd

        n, t, _ = arr.shape
        frame = pd.DataFrame(arr[..., 1:].reshape(n * t, -1), columns=list(channel_names))
        frame.insert(0, "time", stamps.reshape(-1))
        frame.insert(0, "path", np.repeat(np.arange(n), t))
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
            _write_sidecar(csv_sidecar(path), record)
        else:
            _write_parquet(tmp, frame, record)
    tmp.replace(path)


def _write_sidecar(path: Path, record: dict | None) -> None:
    """``record`` as JSON at ``path``; none: an earlier one there removed, as it would describe other paths."""
    if not record:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _write_parquet(path: Path, frame, record: dict | None) -> None:
    """``frame.to_parquet(path, index=False)`` (pandas' own metadata kept) plus ``record`` in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if record:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               SAMPLE_RECORD_KEY: json.dumps(record).encode()})
    pq.write_table(table, path)
