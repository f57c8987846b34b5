"""Row 6: framework overhead: a Lightning training step of SDEGAN vs a bare PyTorch loop doing the same work
with the same module, optimisers and batch (target <= 1.05)."""
from __future__ import annotations

import cProfile
import logging
import pstats
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from _bench_utils import ROOT, compose, fmt_ratio, ratio, sdegan_step

TARGET = 1.05


class Interleave(pl.Callback):
    """After each Lightning step, one bare step on the same module and batch: the two alternate (A, B, A, B).

    A Lightning step is timed from the end of the previous bare step to the end of this batch, so it includes
    everything Lightning does per batch: dataloader fetch, hooks, logging, progress bar, the training step."""

    def __init__(self, skip: int):
        self.skip, self.light, self.bare, self.mark = skip, [], [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.mark is not None:
            self.light.append(now - self.mark)
        t0 = time.perf_counter()
        sdegan_step(module, trainer.optimizers, batch[1])
        self.bare.append(time.perf_counter() - t0)
        self.mark = time.perf_counter()

    def pairs(self):
        bare = self.bare[1:]  # light[i] ends after bare[i] ... pair each Lightning step with the bare step after it
        return self.light[self.skip:], bare[self.skip:len(self.light)]


def fit(ctx, steps: int, stripped: bool, profile: bool = False):
    from neuralsde.training import _instantiate_all, build

    out = ctx.tmp / ("overhead_stripped" if stripped else "overhead")
    overrides = [f"paths.root_dir={ROOT}", f"paths.output_dir={out}", f"paths.log_dir={out}",
                 f"model.train_steps={steps}", "trainer.limit_val_batches=0", "++trainer.enable_model_summary=false",
                 f"trainer.accelerator={'gpu' if ctx.device.type == 'cuda' else 'cpu'}"]
    if ctx.quick:
        overrides.append("data.source.n_paths=1024")
    cfg = compose(overrides)
    _dm, model = build(cfg)
    dm = _dm
    timer = Interleave(skip=2)
    callbacks = [timer] if stripped else _instantiate_all(cfg.callbacks) + [timer]
    loggers = [] if stripped else _instantiate_all(cfg.logger)
    import hydra
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      enable_progress_bar=not stripped)
    prof = cProfile.Profile() if profile else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        if prof:
            prof.enable()
        trainer.fit(model, datamodule=dm)
        if prof:
            prof.disable()
    return timer.pairs(), prof


def _lightning_hotspots(prof, top: int = 4) -> str:
    """Self time spent in Lightning / logger / progress-bar code (the training and bare steps excluded by
    construction: their time is in torch, torchsde and the project's files)."""
    stats = pstats.Stats(prof).stats
    per_file: dict[str, float] = {}
    for (filename, _line, _name), v in stats.items():
        if any(part in filename for part in ("pytorch_lightning", "lightning_fabric", "/rich/", "/tqdm/",
                                             "torchmetrics", "/dataloader", "/utils/data/")):
            key = "/".join(Path(filename).parts[-2:])
            per_file[key] = per_file.get(key, 0.0) + v[2]
    total = sum(per_file.values())
    rows = sorted(per_file.items(), key=lambda kv: -kv[1])[:top]
    return f"{total:.2f} s in all, mostly " + ", ".join(f"{k} {t:.2f} s" for k, t in rows)


def run(ctx) -> list[dict]:
    steps = 14 if ctx.quick else 32
    (light, bare), _ = fit(ctx, steps, stripped=False)
    r = ratio(light, bare)
    note = ""
    data = {"default": r}
    if r["median"] > TARGET:
        (l2, b2), prof = fit(ctx, steps, stripped=True, profile=True)
        r2 = ratio(l2, b2)
        data["stripped"] = r2
        note = (f"above {TARGET}: without progress bar, logger and callbacks the ratio is {fmt_ratio(r2)}; "
                f"Lightning-side self time over the stripped run's {len(l2)} steps: {_lightning_hotspots(prof)}")
    return [{"what": "Lightning step (default trainer, callbacks, CSV logger, progress bar) / bare loop step",
             "result": fmt_ratio(r), "paper": f"target <= {TARGET}", "data": data, "note": note}]
