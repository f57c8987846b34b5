"""Fast vs torchsde backend on the default OU SDE-GAN step (discriminator once on cat([fake, real])).

    python scripts/profile_fast.py [--threads 1 2] [--reps 9] [--profile]

Times the two backends interleaved (median of per-rep ratios); ``--profile`` adds a cProfile of the fast step.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _bench_utils import bare_optimizers, build_sdegan, interleaved  # noqa: E402
from _bench_utils import sdegan_step as step  # noqa: E402  (the module's own training step)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cpu")
    slow, real = build_sdegan(dev, None, {"backend": "torchsde"})
    fast, _ = build_sdegan(dev, None, {"backend": "fast"})
    fast.load_state_dict(slow.state_dict())
    o_slow, o_fast = bare_optimizers(slow), bare_optimizers(fast)
    for n in args.threads:
        torch.set_num_threads(n)
        t = interleaved({"torchsde": lambda: step(slow, o_slow, real), "fast": lambda: step(fast, o_fast, real)},
                        reps=args.reps, warmup=2)
        r = [a / b for a, b in zip(t["torchsde"], t["fast"], strict=True)]
        print(f"threads={n}: torchsde {statistics.median(t['torchsde']) * 1e3:.1f} ms, "
              f"fast {statistics.median(t['fast']) * 1e3:.1f} ms, ratio median {statistics.median(r):.2f}x "
              f"(min {min(r):.2f}, max {max(r):.2f}, reps {len(r)})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            step(fast, o_fast, real)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
