"""Row 10: torch's intra-op threads, one against torch's default (one per core): the choice behind ``threads: 1``
in ``configs/experiment/ou_sdegan.yaml`` and ``threads: null`` (the default) elsewhere. First the default run as
``python train.py`` trains it (Lightning, progress bar, logger, callbacks: what shares the cores with the
intra-op threads), then bare SDE-GAN steps on the fast backend at each experiment's model and batch sizes. CPU
only."""
from __future__ import annotations

import os
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from _bench_utils import ROOT, bare_optimizers, compose, fmt_ratio, interleaved, ratio, sdegan_step
from bench_contractions import SHAPES, build_at_sizes

STEPS = 4


class _StepTimes(pl.Callback):
    def __init__(self):
        self.times, self.mark = [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.mark is not None:
            self.times.append(now - self.mark)
        self.mark = now


def _lightning_step(ctx, threads: int, steps: int) -> float:
    """Median training-step time of the default run (validation off) with ``threads`` intra-op threads."""
    import hydra

    from neuralsde.training import _instantiate_all, build, torch_threads

    out = ctx.tmp / f"threads{threads}"
    cfg = compose([f"paths.root_dir={ROOT}", f"paths.output_dir={out}", f"paths.log_dir={out}",
                   f"model.train_steps={steps}", "trainer.limit_val_batches=0", "++trainer.enable_model_summary=false"])
    timer = _StepTimes()
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm, model = build(cfg)
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.callbacks) + [timer],
                                          logger=_instantiate_all(cfg.logger) or False)
        trainer.fit(model, datamodule=dm)
    return statistics.median(timer.times[5:])


def _lightning_row(ctx, many: int) -> dict:
    steps = 25 if ctx.quick else 80
    t = {"one": [], "many": []}
    for _ in range(1 if ctx.quick else 3):  # alternated: A, B, A, B, ...
        t["one"].append(_lightning_step(ctx, 1, steps))
        t["many"].append(_lightning_step(ctx, many, steps))
    r = ratio(t["many"], t["one"])
    return {"what": f"default run (python train.py: Lightning, progress bar, logger, callbacks): training step with "
                    f"{many} threads / with 1 (median step of {steps}, runs alternated)",
            "result": fmt_ratio(r), "data": r, "paper": "above 1: one thread is faster (threads: 1)",
            "note": f"one thread {statistics.median(t['one']) * 1e3:.1f} ms, {many} threads "
                    f"{statistics.median(t['many']) * 1e3:.1f} ms per step"}


def run(ctx) -> list[dict]:
    many = os.cpu_count() or 1  # torch's default is one per core; the driver's --threads may have changed it
    if ctx.device.type != "cpu" or many < 2:
        why = "threads matter on CPU only" if ctx.device.type != "cpu" else "one core: nothing to compare"
        return [{"what": "CPU threads", "result": "skipped", "paper": "", "note": why}]
    before = torch.get_num_threads()
    rows = [_lightning_row(ctx, many)]
    names = ["ou_sdegan"] if ctx.quick else list(SHAPES)
    try:
        for name in names:
            model, real = build_at_sizes(ctx, name)
            opts = bare_optimizers(model)

            def step(n, model=model, opts=opts, real=real):
                def fn():  # a few steps per repetition: a switch of thread count has a cost of its own
                    torch.set_num_threads(n)
                    for _ in range(STEPS):
                        sdegan_step(model, opts, real)
                return fn
            t = interleaved({"one": step(1), "many": step(many)}, reps=3 if ctx.quick else 12, device=ctx.device,
                            budget_s=10 if ctx.quick else 40)
            r = ratio(t["many"], t["one"])
            rows.append({"what": f"{name} sizes (batch {real.size(0)}): SDE-GAN steps with {many} threads / with 1",
                         "result": fmt_ratio(r), "data": r,
                         "paper": "above 1: one thread is faster (threads: 1)",
                         "note": f"the experiment's config: threads={compose([f'experiment={name}']).get('threads')}"})
    finally:
        torch.set_num_threads(before)
    return rows
