"""Dispatch census of one SDE-GAN training step on the fast backend: reversible Heun vs midpoint.

    python scripts/profile_launches.py [--device cuda] [--lengths 33 65] [--batch 128] [--foreach]

On a launch-bound GPU the time ratio of the two methods roughly follows the ratio of what they dispatch (on an
H200, one more solver step was 1.91-2.01x apart in time, against 1.89x in dispatches here). This counts, per
training step of ``experiment=ou_sdegan`` (the module's own step and optimisers), the torch operations called from
Python that do work (views, metadata and conversions with nothing to convert left out), and where there is a GPU
the CUDA kernels and host-device synchronisations; each count is split into a part per solver step and a fixed
part, from two series lengths. Counts, not timings: they are the same on every run.
``--foreach``: the optimisers' multi-tensor kernels, which torch picks by default on CUDA only (on the CPU the
Adadelta loop dispatches 17 operations per parameter tensor).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _bench_utils import bare_optimizers, build_sdegan, sdegan_step  # noqa: E402

# operations that launch no kernel: views, metadata, allocation, scalar reads (syncs are counted apart)
NO_WORK = frozenset(f"aten::{n}" for n in (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "select", "slice", "narrow", "unsqueeze", "squeeze",
    "permute", "transpose", "t", "expand", "as_strided", "unbind", "split", "chunk", "diagonal", "alias", "detach",
    "detach_", "lift_fresh", "flatten", "empty", "empty_like", "empty_strided", "new_empty", "resolve_conj",
    "resolve_neg", "result_type", "requires_grad_", "set_", "item", "_local_scalar_dense", "is_nonzero"))
SYNC_OPS = frozenset({"aten::_local_scalar_dense"})  # a tensor read on the host (.item(), bool(), .tolist())


IF_COPYING = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::type_as"})  # work only if they copy


def _calls_aten(event) -> bool:
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name.startswith("aten::"):
            return True
        stack.extend(child.cpu_children)
    return False


def _dispatch(event) -> bool:
    """A torch operation called from outside torch's own operations that does work: one kernel launch or more
    on a GPU (a multi-tensor ``_foreach`` operation counts once, as it launches about once on CUDA)."""
    if not event.name.startswith("aten::") or event.name in NO_WORK:
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return event.name not in IF_COPYING or _calls_aten(event)


def census(method: str, length: int, device: torch.device, batch: int | None = None,
           foreach: bool = False) -> dict[str, int]:
    """Counts of one training step (after two warm-up steps): ``dispatches`` (see ``_dispatch``), ``host_reads``
    (tensor values read on the host), and on CUDA ``kernels`` and ``syncs``."""
    from torch.profiler import ProfilerActivity, profile

    overrides = ([f"data.source.t_size={length}"] + ([f"data.batch_size={batch}"] if batch else [])
                 + (["+model.optimizer.foreach=true"] if foreach else []))
    model, real = build_sdegan(device, overrides, {"backend": "fast", "method": method})
    opts = bare_optimizers(model)
    for _ in range(2):
        sdegan_step(model, opts, real)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        sdegan_step(model, opts, real)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    counts = {"dispatches": 0, "host_reads": 0}
    if device.type == "cuda":
        counts.update(kernels=0, syncs=0)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            counts["kernels"] += 1
        elif "Synchronize" in e.name:
            counts["syncs"] += 1
        elif e.name in SYNC_OPS:  # at any depth: bool(t) reads through aten::is_nonzero
            counts["host_reads"] += 1
        elif _dispatch(e):
            counts["dispatches"] += 1
    return counts


def split(method: str, lengths: tuple[int, int], device: torch.device, batch: int | None = None,
          foreach: bool = False) -> dict:
    """``{count: (per solver step, fixed, total at the longer length)}`` from censuses at two lengths."""
    (t1, t2), (a, b) = lengths, [census(method, t, device, batch, foreach) for t in lengths]
    out = {}
    for key in b:
        per_step = (b[key] - a[key]) / (t2 - t1)
        out[key] = (per_step, b[key] - per_step * (t2 - 1), b[key])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", type=int, nargs=2, default=[33, 65], help="two series lengths (observation times)")
    ap.add_argument("--batch", type=int, default=None, help="data.batch_size (default: the experiment's)")
    ap.add_argument("--foreach", action="store_true", help="multi-tensor optimiser kernels (CUDA's default)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    res = {m: split(m, tuple(args.lengths), device, args.batch, args.foreach) for m in ("reversible_heun", "midpoint")}
    t = args.lengths[1]
    print(f"per training step of ou_sdegan, fast backend, {device}, {t - 1} solver steps per solve"
          + (", foreach optimisers" if args.foreach else ""))
    print(f"{'count':<12} {'method':<16} {'per solver step':>16} {'fixed':>8} {'total':>8}")
    for key in res["reversible_heun"]:
        for m in res:
            per, fixed, total = res[m][key]
            print(f"{key:<12} {m:<16} {per:>16.2f} {fixed:>8.0f} {total:>8}")
        rh, mid = res["reversible_heun"][key], res["midpoint"][key]
        if rh[0] and rh[2]:
            print(f"{key:<12} {'midpoint / RH':<16} {mid[0] / rh[0]:>15.2f}x {'':>8} {mid[2] / rh[2]:>7.2f}x")


if __name__ == "__main__":
    main()
