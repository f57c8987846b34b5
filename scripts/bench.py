"""Benchmark driver (`make bench`, `make bench-quick`): runs the rows, prints a table, writes results.md/json.

Every speed figure is a ratio of two variants timed in one process with interleaved repetitions (median and
min-max); only row 7 gives absolute rates, labelled machine-specific. Rows live in scripts/bench_*.py.

    python scripts/bench.py [--quick | --smoke] [--rows 1,3] [--device cuda] [--threads N] [--out bench/results]

A run of some rows replaces those rows in the output and keeps the others, each with the date it was measured
(a row-8 run used to leave a results file of row 8 alone). Quick and smoke runs write ``bench/results_quick`` by
default, so that their small-size figures never replace the full ones.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS = {1: ("bench_solvers", "Reversible Heun vs midpoint"),
        2: ("bench_brownian", "Brownian motion: interval (dt hint) vs no hint vs tree"),
        3: ("bench_lipschitz", "Weight clipping vs gradient penalty"),
        4: ("bench_accuracy", "Gradient accuracy (relative errors, not timing)"),
        5: ("bench_memory", "Peak memory: direct vs adjoint"),
        6: ("bench_overhead", "Framework overhead: Lightning vs bare loop"),
        7: ("bench_throughput", "Throughput (absolute, machine-specific)"),
        8: ("bench_fast", "Fast backend vs torchsde"),
        9: ("bench_contractions", "Fast backend: field-control contraction by shape vs channel-summing GEMM"),
        10: ("bench_threads", "CPU threads: one vs one per core"),
        11: ("bench_outside", "Outside the solver: set-up and metrics, before vs now")}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (~1 min)")
    p.add_argument("--smoke", action="store_true", help="tiniest sizes (implies --quick): checks the driver, not speed")
    p.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row numbers, e.g. 1,3")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: the device CUDA_VISIBLE_DEVICES exposes)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1, as the README's figures; row 10 compares one per core)")
    p.add_argument("--out", default=None,
                   help="output prefix (.md and .json); default bench/results, bench/results_quick for --quick/--smoke")
    return p.parse_args(argv)


def markdown(info: dict, results: list[dict], elapsed: float) -> str:
    lines = ["# neuralsde-lab benchmarks", "",
             "Speed figures are ratios of two variants timed in the same process with interleaved repetitions: "
             "median speed-up and (min-max) over repetitions. Row 7 alone gives absolute rates, valid only for "
             "this machine and load.", "",
             "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [f"| wall time | {elapsed:.0f} s |", ""]
    for res in results:
        lines += [f"## Row {res['row']}: {res['title']}", ""]
        if res.get("measured") and res["measured"] != info.get("date"):
            lines += [f"Measured {res['measured']}, in an earlier run than the one the table at the top describes.", ""]
        if res.get("error"):
            lines += [f"**failed**: `{res['error']}`", ""]
            continue
        lines += ["| measurement | result | paper / target | finding |", "|---|---|---|---|"]
        for e in res["entries"]:
            cells = [e["what"], e["result"], e.get("paper", ""), e.get("note", "")]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def print_table(results: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for res in results:
            print(f"\nRow {res['row']}: {res['title']}")
            for e in res.get("entries", []):
                print(f"  {e['what']}: {e['result']}  [{e.get('paper', '')}]")
        return
    table = Table(title="neuralsde-lab benchmarks (ratios: median (min-max))", show_lines=False)
    for col in ("row", "measurement", "result", "paper / target"):
        table.add_column(col, overflow="fold")
    for res in results:
        if res.get("error"):
            table.add_row(str(res["row"]), res["title"], "FAILED", res["error"][:80])
        for e in res.get("entries", []):
            table.add_row(str(res["row"]), e["what"], e["result"], e.get("paper", ""))
    Console(width=160).print(table)


def merged(out: Path, info: dict, results: list[dict]) -> list[dict]:
    """``results`` with the rows of an earlier run at ``out`` that this run did not measure (same device and
    mode), each keeping the date it was measured, in row order."""
    try:
        earlier = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return results
    same = all(earlier.get("machine", {}).get(k) == info.get(k) for k in ("device", "quick", "smoke"))
    done = {res["row"] for res in results}
    kept = [dict(res, measured=res.get("measured") or earlier["machine"].get("date"))
            for res in earlier.get("rows", []) if same and res.get("row") not in done]
    return sorted(results + kept, key=lambda res: res["row"])


def write(out: Path, info: dict, results: list[dict], elapsed: float) -> None:
    info["load_average_end"] = tuple(round(x, 2) for x in os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = merged(out, info, results)
    out.with_suffix(".md").write_text(markdown(info, rows, elapsed))
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "elapsed_s": elapsed, "rows": rows},
                                                   indent=1, default=str))


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from _bench_utils import Ctx, machine_info

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA device available: nothing to run on --device cuda (skipped).")
        return 0
    rows = [int(r) for r in args.rows.split(",") if r.strip()]
    info = machine_info(device)
    info.update(quick=args.quick or args.smoke, smoke=args.smoke, rows=rows)
    results, start = [], time.perf_counter()
    quick = args.quick or args.smoke
    out = Path(args.out) if args.out else HERE.parent / "bench" / ("results_quick" if quick else "results")
    with tempfile.TemporaryDirectory(prefix="neuralsde-bench-") as tmp:
        ctx = Ctx(device=device, quick=args.quick or args.smoke, tmp=Path(tmp), smoke=args.smoke)
        for row in rows:
            module, title = ROWS[row]
            t0 = time.perf_counter()
            print(f"[bench] row {row}: {title} ...", flush=True)
            try:
                entries = importlib.import_module(module).run(ctx)
                results.append({"row": row, "title": title, "entries": entries, "seconds": time.perf_counter() - t0,
                                "measured": info["date"]})
            except Exception as exc:  # one broken row must not lose the others
                traceback.print_exc()
                results.append({"row": row, "title": title, "error": f"{type(exc).__name__}: {exc}", "entries": [],
                                "seconds": time.perf_counter() - t0, "measured": info["date"]})
            print(f"[bench] row {row} done in {time.perf_counter() - t0:.0f} s", flush=True)
            write(out, info, results, time.perf_counter() - start)  # after every row: a timeout keeps the rest
    elapsed = time.perf_counter() - start
    print_table(results)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
