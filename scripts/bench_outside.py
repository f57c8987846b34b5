"""Row 11: work outside the solver that a run repeats, each timed against the way it was done before, on the same
inputs, interleaved; every pair gives the same numbers (tests/test_datamodule.py, tests/test_metrics.py).

* filling missing values of the OU training split (set-up of ``python train.py``): torchcde, which loops in Python
  over every (path, channel) with a gap, against ``neuralsde.data.interpolation.fill_missing``, vectorised;
* one validation's signature MMD at energy's sizes (256 paths of 27 channels, PDE kernel, path scale 0.1):
  the real sample's Gram matrix computed again against reused (``neuralsde.metrics.sig_mmd._REAL_GRAM``);
* a training step of the real/fake metric's CDE classifier (the test stage's largest part) at ``ou_sdegan``'s sizes:
  through ``torchcde.cdeint`` against the written-out solve of ``CDEClassifier.forward``.

Synthetic paths with the experiments' shapes: no dataset needed.
"""
from __future__ import annotations

import torch
from _bench_utils import fmt_ratio, interleaved, ratio


def _paths(n: int, length: int, channels: int, missing: float = 0.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, length, channels, generator=gen).cumsum(1) * 0.1
    values[torch.rand(values.shape, generator=gen) < missing] = float("nan")
    times = torch.arange(length, dtype=torch.float32).view(1, -1, 1).expand(n, -1, 1)
    return torch.cat([times, values], dim=-1)


def _same(equal: bool, what: str) -> None:
    """A row times two versions only after they agree (a raise, not an assert: ``python -O`` drops asserts)."""
    if not equal:
        raise RuntimeError(f"bench row 11: {what} differs between the code before and now; no timing is meaningful")


def run(ctx) -> list[dict]:
    from neuralsde.data.interpolation import fill_missing, torchcde_fill
    from neuralsde.metrics import sig_mmd
    from neuralsde.metrics.classification import CDEClassifier, real_fake_classification

    rows = []
    # OU's training split: 6554 paths of 64 times, 30% of the values missing
    x = _paths(64 if ctx.smoke else 1024 if ctx.quick else 6554, 64, 1, missing=0.3)
    _same(torch.equal(torchcde_fill(x), fill_missing(x)), "fill_missing")
    t = interleaved({"torchcde": lambda: torchcde_fill(x), "vectorised": lambda: fill_missing(x)},
                    reps=3 if ctx.quick else 5, warmup=0)
    rows.append({"what": f"fill missing values, {len(x)} OU paths (set-up): torchcde per path / vectorised",
                 "result": fmt_ratio(ratio(t["torchcde"], t["vectorised"])), "paper": "same values"})

    n = 16 if ctx.smoke else 64 if ctx.quick else 256
    real, fake = _paths(n, 24, 26, missing=0.02, seed=1), _paths(n, 24, 26, seed=2)
    opts = dict(kind="pde", path_scale=0.1, n_boot=200, seed=0)

    def cold():
        sig_mmd._REAL_GRAM.clear()
        return sig_mmd.signature_mmd(real, fake, **opts)

    _same(cold() == sig_mmd.signature_mmd(real, fake, **opts), "signature MMD with the cached K_xx")
    t = interleaved({"cold": cold, "warm": lambda: sig_mmd.signature_mmd(real, fake, **opts)},
                    reps=3 if ctx.quick else 7)
    rows.append({"what": f"signature MMD of one validation, energy's sizes ({n} paths, 27 channels, PDE kernel): "
                         "real Gram matrix recomputed / reused", "result": fmt_ratio(ratio(t["cold"], t["warm"])),
                 "paper": "same values"})

    # one training step of the classifier (batch 64 of 64 times, rk4), and the whole metric's equality
    sets = [_paths(16, 64, 1, missing=0.3 if i % 2 == 0 else 0.0, seed=10 + i) for i in range(4)]
    written_out = CDEClassifier.forward
    try:
        CDEClassifier.forward = CDEClassifier.torchcde_forward
        before = real_fake_classification(*sets, epochs=1, seed=0)
    finally:
        CDEClassifier.forward = written_out
    _same(before == real_fake_classification(*sets, epochs=1, seed=0), "real/fake classification")
    torch.manual_seed(0)
    model, batch = CDEClassifier(2, 16, "rk4"), _paths(64, 64, 1, seed=3)
    params = list(model.parameters())

    def step(forward):
        return lambda: torch.autograd.grad(forward(model, batch).square().mean(), params)

    t = interleaved({"torchcde": step(CDEClassifier.torchcde_forward), "written": step(written_out)},
                    reps=5 if ctx.smoke else 10 if ctx.quick else 30)
    rows.append({"what": "real/fake metric, a training step of its CDE classifier (batch 64, 64 times, rk4; "
                         "10 epochs of 8 steps in a test stage): torchcde.cdeint / written-out solve",
                 "result": fmt_ratio(ratio(t["torchcde"], t["written"])), "paper": "same values"})
    return rows
