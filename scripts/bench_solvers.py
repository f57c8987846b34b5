"""Row 1: reversible Heun vs midpoint (paper: up to 1.98x, from half the vector-field evaluations)."""
from __future__ import annotations

import torch
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

PAPER = "up to 1.98x"
# From the counts below: the halving holds for the forward solve only. torchsde's reversible-Heun adjoint
# evaluates f_and_g twice per step too (reconstruction + the VJP's forward), so per step forward + backward is
# 3 evaluations + 1 VJP against midpoint's 4 + 2, a ceiling of about 1.5x before any fixed overhead.
BACKWARD_NOTE = ("Forward + adjoint backward per step: reversible Heun 3 f_and_g + 1 VJP, midpoint 4 f_and_g + 2 "
                 "VJPs (counts below), so about 1.5x at most from evaluations; fixed per-step overhead shrinks it.")


def count_calls(sde, fn) -> dict:
    """Run ``fn``; count ``GeneratorSDE.nfe`` (fused ``f_and_g`` calls) and separate ``f`` / ``g`` calls, which
    ``nfe`` does not see (torchsde's shape check calls ``f``, ``g`` and ``f_and_g`` once per solve; euler_heun
    calls ``g`` alone once per step)."""
    calls = {"f": 0, "g": 0}
    orig = {"f": sde.f, "g": sde.g}

    def wrap(name):
        def fn_(t, y):
            calls[name] += 1
            return orig[name](t, y)
        return fn_

    sde.f, sde.g, sde.nfe = wrap("f"), wrap("g"), 0
    try:
        fn()
    finally:
        del sde.f, sde.g
    return {"f_and_g": sde.nfe, **calls}


def generator_nfe(generator, batch: int, lengths=(9, 17), solver=None) -> dict:
    """Evaluations per solver step, as the marginal count between solves of ``lengths - 1`` steps (which cancels
    the per-solve fixed calls), forward and adjoint backward, plus the fixed per-solve forward calls."""
    counts = {}
    for n in lengths:
        times = torch.arange(n, dtype=torch.float32)
        holder = {}

        def fwd(times=times, holder=holder):
            holder["out"] = generator(times, batch, solver=solver)
        fwd_c = count_calls(generator.sde, fwd)
        bwd_c = count_calls(generator.sde, lambda holder=holder: holder["out"].sum().backward())
        counts[n] = (fwd_c, bwd_c)
    (a_f, a_b), (b_f, b_b) = counts[lengths[0]], counts[lengths[1]]
    d = lengths[1] - lengths[0]
    per = {k: (b_f[k] - a_f[k]) / d for k in a_f}
    back = {k: (b_b[k] - a_b[k]) / d for k in a_b}
    fixed = {k: a_f[k] - per[k] * (lengths[0] - 1) for k in a_f}
    return {"per_step": per["f_and_g"], "backward_per_step": back["f_and_g"], "per_step_separate_g": per["g"],
            "per_step_separate_f": per["f"], "fixed_per_solve": fixed, "backward_separate": back}


def _latent_rows(ctx) -> list[dict]:
    what = "latent SDE step (fwd+bwd, adjoint): midpoint / reversible Heun"
    try:
        import latent_sde.module  # noqa: F401
    except Exception as exc:
        return [{"what": what, "result": "skipped", "paper": PAPER,
                 "note": f"latent_sde.module not importable ({type(exc).__name__}: {exc})"}]
    try:
        from _bench_utils import build_latent, latent_step

        # pinned to torchsde: this row compares the methods as the paper timed them (row 8 has the fast backend)
        a, b = (build_latent(ctx, [f"solver={m}", "solver.backend=torchsde"]) for m in ("reversible_heun", "midpoint"))
        b[0].load_state_dict(a[0].state_dict())
        t = interleaved({"rh": lambda: latent_step(*a), "mid": lambda: latent_step(*b)}, reps=4 if ctx.quick else 10,
                        device=ctx.device, budget_s=20 if ctx.quick else 60)
        r = ratio(t["mid"], t["rh"])
        return [{"what": what, "result": fmt_ratio(r), "paper": PAPER, "note": "", "data": r}]
    except Exception as exc:
        return [{"what": what, "result": "skipped", "paper": PAPER,
                 "note": f"latent SDE could not be built or stepped ({type(exc).__name__}: {exc})"}]


def run(ctx) -> list[dict]:
    reps, budget = (4, 25) if ctx.quick else (10, 90)
    overrides = ["data.source.n_paths=512"] if ctx.quick else None
    # Pinned to torchsde: this row measures the library the paper used (row 8 compares the fast backend).
    rh, real = build_sdegan(ctx.device, overrides, {"method": "reversible_heun", "backend": "torchsde"})
    mid, _ = build_sdegan(ctx.device, overrides, {"method": "midpoint", "backend": "torchsde"})
    mid.load_state_dict(rh.state_dict())
    o_rh, o_mid = bare_optimizers(rh), bare_optimizers(mid)
    rows = []

    t = interleaved({"rh": lambda: sdegan_step(rh, o_rh, real), "mid": lambda: sdegan_step(mid, o_mid, real)},
                    reps=reps, device=ctx.device, budget_s=budget)
    r = ratio(t["mid"], t["rh"])
    prof = profile_breakdown(lambda: sdegan_step(rh, o_rh, real))
    rows.append({"what": "SDE-GAN step (G+D, fwd+bwd, adjoint): midpoint time / reversible Heun time",
                 "result": fmt_ratio(r), "paper": PAPER, "data": r, "profile": prof,
                 "note": ("reversible Heun step: " + describe_profile(prof)) if r["median"] < 1.9 else ""})

    def gen(model):
        def fn():
            model.generator(model.times, real.size(0)).sum().backward()
            model.generator.zero_grad(set_to_none=True)
        return fn

    t = interleaved({"rh": gen(rh), "mid": gen(mid)}, reps=reps * 2, device=ctx.device, budget_s=budget / 2)
    r = ratio(t["mid"], t["rh"])
    prof_rh, prof_mid = profile_breakdown(gen(rh)), profile_breakdown(gen(mid))
    rows.append({"what": "generator alone (fwd+bwd, adjoint): midpoint / reversible Heun", "result": fmt_ratio(r),
                 "paper": PAPER, "data": r, "profile": {"reversible_heun": prof_rh, "midpoint": prof_mid},
                 "note": (f"{BACKWARD_NOTE} Reversible Heun {describe_profile(prof_rh)}")
                 if r["median"] < 1.9 else ""})
    rows.extend(_latent_rows(ctx))

    for name, model in (("reversible_heun", rh), ("midpoint", mid)):
        n = generator_nfe(model.generator, 16)
        fixed = n["fixed_per_solve"]
        rows.append({"what": f"f_and_g evaluations per solver step, {name} (forward; adjoint backward)",
                     "result": f"{n['per_step']:.2f}; {n['backward_per_step']:.2f}",
                     "paper": "1 (reversible Heun), 2 (midpoint)", "data": n,
                     "note": f"plus per solve: {fixed['f_and_g']:.0f} f_and_g, {fixed['f']:.0f} f, {fixed['g']:.0f} g "
                             "(torchsde's shape check evaluates f, g and f_and_g once per sdeint call; reversible "
                             "Heun adds its initial evaluation). Backward: the adjoint re-evaluates and takes a VJP."})
    return rows


if __name__ == "__main__":
    import pathlib
    import sys

    from _bench_utils import Ctx
    for row in run(Ctx(torch.device("cpu"), "--quick" in sys.argv, pathlib.Path("/tmp"))):
        print(row["what"], row["result"], row.get("note", ""))
