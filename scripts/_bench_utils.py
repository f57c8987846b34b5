"""Shared helpers of the benchmark rows: interleaved timing, ratios, model building, machine info, profiling."""
from __future__ import annotations

import cProfile
import dataclasses
import datetime
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


class Skip(Exception):
    """Raised by a row (or part of one) that cannot run here; the message goes into the results."""


@dataclasses.dataclass
class Ctx:
    """What every row receives: device, size preset and where temporary run output may go."""

    device: torch.device
    quick: bool
    tmp: Path
    smoke: bool = False  # tiniest sizes, for the test suite's run of the driver


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict, reps: int, warmup: int = 1, device: torch.device | None = None,
                budget_s: float | None = None, min_reps: int = 3) -> dict[str, list]:
    """Time each callable of ``variants`` ``reps`` times, interleaved A, B, A, B, ... after ``warmup`` rounds.

    Interleaving spreads drifts of machine load evenly over the variants, so their ratios stay meaningful
    where single absolute times would not. Stops early (after ``min_reps``) once ``budget_s`` is spent, so a
    loaded machine stretches the spread rather than the run time. Returns ``{name: [seconds per rep]}``.
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for i in range(reps):
        if budget_s is not None and i >= min_reps and time.perf_counter() - start > budget_s:
            break
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def ratio(slow: list, fast: list) -> dict:
    """Speed-up of ``fast`` over ``slow`` per interleaved repetition: median and min-max of ``slow_i / fast_i``."""
    r = [s / f for s, f in zip(slow, fast, strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "reps": len(r)}


def fmt_ratio(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


# ---------------------------------------------------------------------------------------------------- models

def compose(overrides: list[str] | None = None):
    """The real Hydra config (as ``train.py`` sees it), composed with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides or [])


_DATA_CACHE: dict = {}


def build_sdegan(device: torch.device, overrides: list[str] | None = None, solver: dict | None = None,
                 seed: int = 0):
    """``(model, real batch)`` built from the real config as ``neuralsde.training.build`` does; ``solver``
    entries override the solver group. The datamodule is cached per data overrides (it dominates start-up)."""
    import hydra
    from omegaconf import OmegaConf

    from neuralsde.solver import SolverConfig

    cfg = compose(overrides)
    key = tuple(o for o in (overrides or []) if not o.startswith(("solver", "model")))
    if key not in _DATA_CACHE:
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        _DATA_CACHE[key] = dm
    dm = _DATA_CACHE[key]
    scfg = OmegaConf.to_container(cfg.solver, resolve=True)
    scfg.update(solver or {})
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(cfg.model, times=dm.times, normalizer=dm.normalizer,
                                    solver=SolverConfig(**scfg), _convert_="all").to(device)
    real = dm.filled["train"][: dm.batch_size].to(device)  # the filled paths, as training_step reads them
    return model, real


def bare_optimizers(model):
    return model.configure_optimizers()


def _no_log(*args, **kwargs) -> None:
    pass


def sdegan_step(model, opts, real: torch.Tensor) -> None:
    """One SDE-GAN step without Lightning: the module's own ``training_step`` (so it never drifts from it), with
    its three Lightning services replaced for the call: ``optimizers()`` returns ``opts``, ``manual_backward``
    is ``loss.backward()``, ``log`` does nothing. The SWA/step counting of ``on_train_batch_end`` is left out."""
    shims = {"optimizers": lambda *a, **k: opts, "manual_backward": lambda loss, *a, **k: loss.backward(*a, **k),
             "log": _no_log}
    for name, fn in shims.items():
        object.__setattr__(model, name, fn)
    try:
        model.training_step((real, real), 0)  # (raw, filled): training_step reads the filled paths
    finally:
        for name in shims:
            object.__delattr__(model, name)


def build_latent(ctx, overrides: list[str]):
    """``(model, optimizer, batch)`` of ``experiment=ou_latent_sde`` with ``overrides``, built as training does."""
    from neuralsde.training import build

    out = ctx.tmp / "latent"
    paths = [f"paths.root_dir={ROOT}", f"paths.output_dir={out}", f"paths.log_dir={out}"]
    dm, model = build(compose(["experiment=ou_latent_sde", *overrides, *paths]))
    model = model.to(ctx.device)
    opt = model.configure_optimizers()
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    batch = [b.to(ctx.device) for b in next(iter(dm.train_dataloader()))]
    return model, opt, batch


def latent_step(model, opt, batch) -> None:
    """One latent SDE training step without Lightning (automatic optimisation: ``training_step`` returns the loss;
    ``self.log`` without a Trainer only warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = model.training_step(batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.sde.set_context(None)  # what LatentSDE.on_train_batch_end does


def fast_available() -> tuple[bool, str]:
    try:
        import neuralsde.fast  # noqa: F401
        from neuralsde.fast import fast_cdeint, fast_sdeint, sample_increments  # noqa: F401
    except Exception as exc:  # any failure of a half-written backend means: skip its rows
        return False, f"neuralsde.fast does not import ({type(exc).__name__}: {exc})"
    return True, ""


# ------------------------------------------------------------------------------------------------- profiling

def _key(fn):
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def profile_groups() -> dict:
    """Functions whose cumulative time makes up each cost group of a solve (disjoint by construction)."""
    import torchcde
    import torchsde

    from sdegan.components.discriminator import DiscriminatorCDE
    from sdegan.components.generator import GeneratorSDE
    return {"vector-field forwards": [GeneratorSDE.f_and_g, DiscriminatorCDE.forward],
            "Brownian queries": [torchsde.BrownianInterval.__call__, torchsde.BrownianTree.__call__],
            "interpolation": [torchcde.LinearInterpolation.derivative],
            "autograd VJPs (adjoint)": [torch.autograd.grad]}


def profile_breakdown(fn, calls: int = 1, top: int = 6) -> dict:
    """cProfile ``fn``: shares of time in vector-field forwards, Brownian queries, interpolation, adjoint VJPs;
    the remainder is Python overhead (torchsde's solver bookkeeping, module calls, optimisers)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(stats.total_tt, 1e-12)
    shares = {}
    for group, fns in profile_groups().items():
        keys = {_key(f) for f in fns}
        shares[group] = sum(v[3] for k, v in stats.stats.items() if k in keys) / total
    shares["rest (solver bookkeeping, Python)"] = max(0.0, 1 - sum(shares.values()))
    entries = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.stats.items()), reverse=True)
    return {"total_s": total / calls, "shares": shares,
            "top_tottime": [f"{name} {tt / calls * 1e3:.1f} ms" for tt, name in entries[:top]]}


def describe_profile(p: dict) -> str:
    shares = ", ".join(f"{k} {v:.0%}" for k, v in p["shares"].items())
    return f"cProfile: {shares}; top self-time: {', '.join(p['top_tottime'][:3])}"


# --------------------------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import pytorch_lightning
    import torchcde
    import torchsde
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__, "torchsde": torchsde.__version__,
            "torchcde": getattr(torchcde, "__version__", "unknown"), "lightning": pytorch_lightning.__version__,
            "device": str(device), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
