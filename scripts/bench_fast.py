"""Row 8: the fast reversible-Heun backend (neuralsde.fast) vs torchsde, full SDE-GAN step (target >= 3x)."""
from __future__ import annotations

from _bench_utils import (
    bare_optimizers,
    build_sdegan,
    describe_profile,
    fast_available,
    fmt_ratio,
    interleaved,
    profile_breakdown,
    ratio,
    sdegan_step,
)

TARGET = 3.0


def run(ctx) -> list[dict]:
    ok, why = fast_available()
    if not ok:
        return [{"what": "fast backend rows", "result": "skipped", "paper": f"target >= {TARGET}x", "note": why}]
    overrides = ["data.source.n_paths=512"] if ctx.quick else []
    slow, real = build_sdegan(ctx.device, overrides, {"backend": "torchsde"})
    fast, _ = build_sdegan(ctx.device, overrides, {"backend": "fast"})
    fast.load_state_dict(slow.state_dict())
    o_slow, o_fast = bare_optimizers(slow), bare_optimizers(fast)
    t = interleaved({"torchsde": lambda: sdegan_step(slow, o_slow, real),
                     "fast": lambda: sdegan_step(fast, o_fast, real)},
                    reps=4 if ctx.quick else 10, device=ctx.device, budget_s=25 if ctx.quick else 80)
    r = ratio(t["torchsde"], t["fast"])
    note = ""
    if r["median"] < TARGET:
        prof = profile_breakdown(lambda: sdegan_step(fast, o_fast, real))
        note = f"below {TARGET}x; fast step " + describe_profile(prof)
    rows = [{"what": "SDE-GAN step (reversible Heun, adjoint): torchsde time / fast time", "result": fmt_ratio(r),
             "paper": f"target >= {TARGET}x", "data": r, "note": note}]
    try:
        from neuralsde.solver import SolverConfig
        SolverConfig(method="midpoint", backend="fast")
        midpoint_fast = True
    except ValueError:
        midpoint_fast = False
    if midpoint_fast:  # picked up automatically once the fast backend grows a midpoint solver
        mid, _ = build_sdegan(ctx.device, overrides, {"backend": "fast", "method": "midpoint"})
        mid.load_state_dict(slow.state_dict())
        o_mid = bare_optimizers(mid)
        t = interleaved({"rh": lambda: sdegan_step(fast, o_fast, real), "mid": lambda: sdegan_step(mid, o_mid, real)},
                        reps=4 if ctx.quick else 10, device=ctx.device, budget_s=25 if ctx.quick else 60)
        r = ratio(t["mid"], t["rh"])
        rows.append({"what": "fast backend SDE-GAN step: midpoint / reversible Heun", "result": fmt_ratio(r),
                     "paper": "up to 1.98x", "data": r, "note": ""})
    else:
        rows.append({"what": "fast backend: reversible Heun vs midpoint", "result": "n/a", "paper": "",
                     "note": "neuralsde.fast implements reversible Heun only (SolverConfig rejects backend=fast with "
                             "other methods); row 1 gives the torchsde comparison"})
    return rows
