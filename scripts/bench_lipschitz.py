"""Row 3: weight clipping vs gradient penalty, full SDE-GAN step (paper: up to 1.87x)."""
from __future__ import annotations

from _bench_utils import (
    bare_optimizers,
    build_sdegan,
    describe_profile,
    fmt_ratio,
    interleaved,
    profile_breakdown,
    ratio,
    sdegan_step,
)

PAPER = "up to 1.87x"


def run(ctx) -> list[dict]:
    # Both through the same bare loop (sdegan_step: the module's own training_step, Lightning services stubbed).
    overrides = ["data.source.n_paths=512"] if ctx.quick else []
    clip, real = build_sdegan(ctx.device, overrides + ["model.lipschitz=clip"])
    gp, _ = build_sdegan(ctx.device, overrides + ["model.lipschitz=gradient_penalty"])
    gp.load_state_dict(clip.state_dict())
    o_clip, o_gp = bare_optimizers(clip), bare_optimizers(gp)
    t = interleaved({"clip": lambda: sdegan_step(clip, o_clip, real), "gp": lambda: sdegan_step(gp, o_gp, real)},
                    reps=4 if ctx.quick else 10, device=ctx.device, budget_s=25 if ctx.quick else 90)
    r = ratio(t["gp"], t["clip"])
    note = ""
    if r["median"] < 1.87:
        prof = profile_breakdown(lambda: sdegan_step(gp, o_gp, real))
        note = ("the penalty adds one discriminator solve (direct backprop, no adjoint) and a double "
                "backward, but both are discriminator work only; the generator solve and its adjoint, the larger "
                "share at these sizes, are common to both. Penalty step: " + describe_profile(prof))
    return [{"what": "SDE-GAN step: gradient-penalty time / weight-clipping time", "result": fmt_ratio(r),
             "paper": PAPER, "data": r, "note": note}]
