"""Reproduce the papers' comparison tables (`make paper-tables`): multiruns over seeds, aggregated.

    python scripts/paper_tables.py [--scale cpu|paper] [--seeds 0,1,2] [--steps N] [--tables a,b,c]
                                   [--results results] [--dry-run] [--aggregate-only] [--force]
                                   [-- extra hydra overrides for every run]

(a) SDE-GAN on OU: reversible Heun vs midpoint (time per training step, val and test metrics);
(b) SDE-GAN on OU: weight clipping vs gradient penalty;
(c) latent SDE on OU: reversible Heun vs midpoint (skipped if configs/experiment/ou_latent_sde.yaml is absent).

Each table is one `python train.py -m ...` subprocess with hydra.sweep.dir=<results>/<scale>/<table>; its output
goes to <that dir>/multirun.log. Then each dir is aggregated (scripts/aggregate.py) and <results>/paper_tables.md
gets the tables, the machine and the exact commands. `--scale cpu` fits about an hour on a 2-core CPU (few
steps: the timing columns are meaningful, the quality metrics only roughly); `--scale paper` is the papers'
full recipe, meant for a GPU (hours).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from aggregate import AggregateError, aggregate  # noqa: E402

# Per scale: steps, overrides of the SDE-GAN tables, of the latent SDE table, validation interval.
# cpu: the paper's OU data (64 times, batch 128) with fewer paths and 400 steps, and the cheaper GRU classifier
# and shorter TSTR training in the test metrics (the CDE classifier dominates a short run's time): 18 runs in
# 40-60 minutes on 2 cores. All tables use the torchsde backend, the library the papers timed.
CPU_METRICS = "callbacks.metrics.options={classifier:gru,classifier_epochs:5,forecast_epochs:10}"
SCALES = {
    "cpu": {"steps": 400,
            "sdegan": ["experiment=ou_sdegan", "data.source.n_paths=2048", "solver.backend=torchsde", CPU_METRICS],
            "latent": ["experiment=ou_latent_sde", "data.source.n_paths=2048", "solver.backend=torchsde", CPU_METRICS],
            "interval": 100},
    "paper": {"steps": None,  # the experiment's own (ou_sdegan_paper: 10,000 steps, batch 1024)
              "sdegan": ["experiment=ou_sdegan_paper", "solver.backend=torchsde"],
              "latent": ["experiment=ou_latent_sde", "data.source.n_paths=8192", "data.batch_size=1024",
                         "model.train_steps=5000", "solver.backend=torchsde"],
              "interval": None},
}
TABLES = {
    "a": ("SDE-GAN on OU: reversible Heun vs midpoint", "sdegan", ["solver=reversible_heun,midpoint"],
          ["train/step_time", "val/sig_mmd", "test/sig_mmd", "test/marginal_w1", "test/real_fake_acc",
           "test/tstr_loss"]),
    "b": ("SDE-GAN on OU: weight clipping vs gradient penalty", "sdegan", ["model.lipschitz=clip,gradient_penalty"],
          ["train/step_time", "val/sig_mmd", "test/sig_mmd", "test/marginal_w1", "test/real_fake_acc",
           "test/tstr_loss"]),
    "c": ("Latent SDE on OU: reversible Heun vs midpoint", "latent", ["solver=reversible_heun,midpoint"],
          ["train/step_time", "val/elbo", "test/elbo", "test/sig_mmd", "test/marginal_w1", "test/real_fake_acc",
           "test/tstr_loss"]),
}


def build_command(table: str, scale: str, seeds: str, steps: int | None, sweep_dir: Path,
                  extra: list[str]) -> list[str]:
    _, family, grid, _ = TABLES[table]
    spec = SCALES[scale]
    args = [sys.executable, "train.py", "-m", *spec[family], *grid, f"seed={seeds}"]
    steps = steps if steps is not None else spec["steps"]
    if steps is not None:
        args += [f"model.train_steps={steps}"]
        if family == "sdegan":
            args += [f"model.swa_start={max(1, steps // 2)}"]
        interval = spec["interval"] if spec["interval"] and spec["interval"] <= steps else steps
        args += [f"trainer.val_check_interval={interval}"]
    # hydra.sweep.dir: a known place per table, so the aggregation and the markdown can find it.
    args += ["extras.print_config=false", f"hydra.sweep.dir={sweep_dir}"]
    # an extra override replaces the script's own for the same key (the command then reads unambiguously)
    keys = {_key(e) for e in extra}
    return args[:3] + [a for a in args[3:] if _key(a) not in keys] + list(extra)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:  # the model name is only in /proc/cpuinfo on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    # this process's default, not the runs' threads (each table's section says those)
    return (f"- CPU: {cpu}, {os.cpu_count()} cores (torch's default threads {torch.get_num_threads()})\n"
            f"- GPU: {gpu}\n- torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n")


# Hydra's launchers log "Launching 6 jobs locally" and, as each job starts, "#3 : solver=midpoint seed=0"
LAUNCHING = re.compile(r"Launching (\d+) jobs")
JOB_START = re.compile(r"#(\d+) : (.*)$")


def run(cmd: list[str], log_path: Path, label: str = "", poll_s: float = 2.0,
        show: set[str] | None = None) -> tuple[int, float]:
    """Run ``cmd`` with its output in ``log_path``, printing each job's start as Hydra's launcher logs it (its
    overrides with a key in ``show``, or all): a table runs for 10-20 minutes at the cpu scale (hours at the
    paper's) and its output goes to the log alone, so the terminal showed nothing between "running ..." and "done".
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start, total, pending = time.perf_counter(), "?", ""
    with open(log_path, "w") as log, open(log_path, errors="replace") as follow:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while True:
            rc = proc.poll()  # before the read: once it has exited, this read gets the rest of the log
            *lines, pending = (pending + follow.read()).split("\n")
            if rc is not None:
                lines.append(pending)  # its last line may have no newline
            for line in lines:
                if launching := LAUNCHING.search(line):
                    total = launching.group(1)
                elif job := JOB_START.search(line):
                    minutes = (time.perf_counter() - start) / 60
                    overrides = [o for o in job.group(2).split() if show is None or _key(o) in show]
                    print(f"{label}job {int(job.group(1)) + 1}/{total}: {' '.join(overrides)} (at {minutes:.1f} min)",
                          flush=True)
            if rc is not None:
                return rc, time.perf_counter() - start
            time.sleep(poll_s)


def run_threads(sweep_dir: Path) -> str:
    """The torch threads its runs trained with (``threads`` in their config.yaml): the experiments set their own
    (ou_sdegan: 1), so the machine's default, all the header gave, misstated the step times' setting."""
    import yaml

    values = set()
    for cfg_path in sorted(sweep_dir.glob("*/config.yaml")):
        values.add((yaml.safe_load(cfg_path.read_text()) or {}).get("threads"))
    if not values:
        return ""
    shown = ", ".join(sorted("torch's default" if v is None else str(v) for v in values))
    return f"Torch threads per run: {shown} (`threads`)."


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, help="training steps of every run (e.g. 2 for a smoke test)")
    parser.add_argument("--tables", default="a,b,c", help="which tables, e.g. a,c")
    parser.add_argument("--results", default="results", help="output folder (default results/, relative to the repo)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--aggregate-only", action="store_true", help="rebuild the tables from existing runs")
    parser.add_argument("--force", action="store_true", help="delete a table's earlier runs before rerunning it")
    parser.add_argument("extra", nargs="*", help="hydra overrides added to every run (after --)")
    args = parser.parse_args(argv)

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    bad = [t for t in tables if t not in TABLES]
    if bad or (args.steps is not None and args.steps < 1):
        parser.error(f"--tables {bad} unknown (choose from {sorted(TABLES)})" if bad else "--steps must be >= 1")
    seeds = ",".join(s.strip() for s in args.seeds.split(",") if s.strip())
    results = (ROOT / args.results).resolve() if not Path(args.results).is_absolute() else Path(args.results)
    has_latent = (ROOT / "configs" / "experiment" / "ou_latent_sde.yaml").is_file()

    sections, failures = [], 0
    for t in tables:
        title, family, _, metrics = TABLES[t]
        if family == "latent" and not has_latent:
            msg = f"({t}) {title}: skipped, configs/experiment/ou_latent_sde.yaml does not exist yet."
            print(msg)
            sections.append(f"## ({t}) {title}\n\nSkipped: configs/experiment/ou_latent_sde.yaml does not exist.\n")
            continue
        sweep_dir = results / args.scale / f"table_{t}"
        # relative to the repo when inside it (the commands run there): shorter, and valid on another checkout
        shown_dir = sweep_dir.relative_to(ROOT) if sweep_dir.is_relative_to(ROOT) else sweep_dir
        cmd = build_command(t, args.scale, seeds, args.steps, shown_dir, args.extra)
        shown = shlex.join(["python", *cmd[1:]])
        if args.dry_run:
            print(shown)
            continue
        note = ""
        if args.aggregate_only and not sweep_dir.is_dir():  # before anything is written: keep the existing tables
            print(f"paper_tables.py: no runs to aggregate at {sweep_dir}. Fix: run the tables first (without "
                  "--aggregate-only), or pass --results where they were run.", file=sys.stderr)
            return 2
        if not args.aggregate_only:
            if sweep_dir.exists() and any(sweep_dir.iterdir()):
                if not args.force:
                    print(f"paper_tables.py: {sweep_dir} already holds runs. Fix: --force to delete and rerun them, "
                          "or --aggregate-only to rebuild the tables from them.", file=sys.stderr)
                    return 2
                shutil.rmtree(sweep_dir)
            print(f"({t}) {title}: running ... (log: {sweep_dir / 'multirun.log'})", flush=True)
            varied = {_key(g) for g in TABLES[t][2]} | {"seed"}
            rc, seconds = run(cmd, sweep_dir / "multirun.log", label=f"({t}) ", show=varied)
            note = f"Wall time of the multirun: {seconds / 60:.1f} min."
            print(f"({t}) done in {seconds / 60:.1f} min, exit status {rc}", flush=True)
            if rc != 0:
                failures += 1
                note += f" **The multirun failed (exit status {rc})**; the table has the jobs that finished."
                print(tail(sweep_dir / "multirun.log"), file=sys.stderr)
        try:
            # metrics a family does not log (e.g. val/elbo for the SDE-GAN) are left out, not an error
            _, text, _ = aggregate(sweep_dir, sweep_dir / "summary", metrics=metrics, skip_unknown=True)
        except AggregateError as err:
            failures += 1
            text = f"No table: {err}\n"
        note = " ".join(x for x in (note, run_threads(sweep_dir)) if x)
        sections.append(f"## ({t}) {title}\n\n```bash\n{shown}\n```\n\n{note}\n\n{text}")
    if args.dry_run:
        return 0

    out = results / "paper_tables.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Paper tables ({args.scale} scale, seeds {seeds})\n\nGenerated by `python scripts/paper_tables.py "
              f"{shlex.join(argv if argv is not None else sys.argv[1:])}`. Cells: mean ± sample std over seeds; "
              "`train/step_time` is each run's median seconds per training step. Lower is better for every "
              "metric except `test/real_fake_acc` (0.5 is best) and `val/elbo`, `test/elbo` (higher is better).\n\n"
              f"## Machine\n\n{machine()}\n")
    out.write_text(header + "\n".join(sections))
    print(f"Wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
