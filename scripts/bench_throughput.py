"""Row 7: absolute throughput (machine-specific): training steps per second and generated paths per second for
the default experiment (batch 128) and the paper-sized one (batch 1024), per available backend."""
from __future__ import annotations

import statistics

import torch
from _bench_utils import bare_optimizers, build_sdegan, fast_available, interleaved, sdegan_step


def _rate(times: list, per: int) -> str:
    rates = sorted(per / t for t in times)
    return f"{statistics.median(rates):,.1f} ({rates[0]:,.1f}-{rates[-1]:,.1f})"


def run(ctx) -> list[dict]:
    ok, why = fast_available()
    backends = ["torchsde"] + (["fast"] if ok else [])
    experiments = [("default (ou_sdegan, batch 128)", ["experiment=ou_sdegan"])]
    if not ctx.quick or ctx.device.type == "cuda":
        experiments.append(("paper (ou_sdegan_paper, batch 1024)", ["experiment=ou_sdegan_paper"]))
    else:
        experiments.append(("paper (batch 1024; quick: 2048-path dataset)", ["experiment=ou_sdegan_paper",
                                                                            "data.source.n_paths=2048"]))
    rows = []
    for label, overrides in experiments:
        for backend in backends:
            model, real = build_sdegan(ctx.device, overrides, {"backend": backend})
            opts = bare_optimizers(model)
            batch = real.size(0)

            def sample(model=model, batch=batch):
                with torch.no_grad():
                    model.sample(batch)

            def step(model=model, opts=opts, real=real):
                sdegan_step(model, opts, real)
            t = interleaved({"step": step, "sample": sample},
                            reps=3 if ctx.quick else 5, device=ctx.device, budget_s=15 if ctx.quick else 40)
            rows.append({"what": f"{label}, backend={backend}: training steps/s | generated paths/s "
                                 "(bare loop; median, min-max; MACHINE-SPECIFIC)",
                         "result": f"{_rate(t['step'], 1)} | {_rate(t['sample'], batch)}", "paper": "",
                         "data": {"step_s": t["step"], "sample_s": t["sample"], "batch": batch},
                         "note": "absolute rates: compare only on the same machine and load"})
    if not ok:
        rows.append({"what": "fast backend throughput", "result": "skipped", "paper": "", "note": why})
    return rows
