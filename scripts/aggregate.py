"""Mean ± std over seeds of every configuration of a Hydra multirun.

    python scripts/aggregate.py MULTIRUN_DIR [--out PREFIX] [--metrics test/sig_mmd,val/sig_mmd,...]
                                [--ignore seed] [--all-metrics]

Each job directory (one holding `.hydra/overrides.yaml`) contributes its overrides and, from
`csv/metrics.csv`, the last logged value of each metric (the median for `train/step_time`, so the slow
first step does not count). Jobs are grouped by their overrides minus `seed`; the table has one row per
configuration with n (jobs) and mean ± std (sample std, ddof=1) per metric. Writes PREFIX.md and PREFIX.csv
(default PREFIX: MULTIRUN_DIR/summary). Jobs without a metrics.csv, and jobs that have not finished (by their
config.yaml: no test/ metrics with test=true, or a last.ckpt short of model.train_steps) are listed and counted
as skipped in their configuration's row, and left out of its means. Folders of eval.py and sample.py runs in the
same tree are not jobs of the sweep: they are left out and counted in one line. A single run's own directory is
refused (it is not a sweep).
Exit status: 0 on success, 2 when there is nothing to aggregate.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # this checkout's neuralsde, not one installed from elsewhere
    sys.path.insert(0, str(HERE.parent))

from neuralsde.run_metrics import last_logged as read_metrics  # noqa: E402

NOT_TRAINING = "not_training"  # attrs key of collect's frame: (folder, script) of eval.py/sample.py runs left out
SKIP = "skipped"  # column of collect's frame: why the job is left out of the means ("" for a finished job)
NONFINITE = "nonfinite"  # column of collect's frame: the metrics whose last logged value is NaN or inf


class AggregateError(ValueError):
    """Nothing usable in the given directory (exit status 2 on the command line)."""


def find_jobs(multirun_dir: Path) -> list[Path]:
    """Job directories under ``multirun_dir`` (any depth; submitit's own folder excluded), in job order."""
    jobs = [p.parent.parent for p in multirun_dir.rglob(".hydra/overrides.yaml") if ".submitit" not in p.parts]
    # numbers in numeric order (2 before 10); a number beside a name (job 0 beside a folder old/0) sorts first
    # instead of comparing int with str, which raised TypeError for such a folder
    return sorted(jobs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s)
                                       for s in p.relative_to(multirun_dir).parts])


def other_script(run_dir: Path) -> str | None:
    """``"eval.py"`` or ``"sample.py"`` where ``run_dir`` is one of their Hydra run folders, else None (a training
    job). Judged by the run's composed config (eval.yaml and sample.yaml have ``ckpt_path`` and no model or data;
    ``task_name`` may be renamed), or without it by the files they write: eval.py's metrics.json or log beside no
    checkpoints/, sample.py's log."""
    if (run_dir / "checkpoints").is_dir() or (run_dir / "csv" / "metrics.csv").is_file():
        return None
    cfg_path = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    except yaml.YAMLError:
        cfg = None
    if isinstance(cfg, dict):
        if "ckpt_path" in cfg and "model" not in cfg and "data" not in cfg:
            return "sample.py" if "out" in cfg else "eval.py"
        return None
    if (run_dir / "metrics.json").is_file() or (run_dir / "eval.log").is_file():
        return "eval.py"
    return "sample.py" if (run_dir / "sample.log").is_file() else None


def refuse_single_run(root: Path, fix: str) -> None:
    """A run's own directory (``.hydra/`` in it) is one run, not a sweep: its summary would be a table of one job,
    written into the run."""
    if not (root / ".hydra" / "overrides.yaml").is_file():
        return
    what = other_script(root)
    kind = f"the output directory of one {what} run" if what else "the directory of a single training run"
    sweep = root.parent if (root.parent / "multirun.yaml").is_file() else None
    hint = f" This run is a job of the sweep {str(sweep)!r}: pass that." if sweep else ""
    raise AggregateError(f"MULTIRUN_DIR {str(root)!r} is {kind} (it holds .hydra/ itself), not a multirun sweep; "
                         f"aggregate.py summarises the jobs of a sweep.{hint} {fix}")


def not_training_note(others: list[tuple[str, str]]) -> str:
    """One line: how many eval.py/sample.py run folders were left out, of which script, and which."""
    scripts = sorted({script for _, script in others})
    per = ", ".join(f"{sum(s == script for _, s in others)} {script}" for script in scripts)
    return (f"Left out {len(others)} folder(s) of eval.py/sample.py runs, not training jobs ({per}): "
            + ", ".join(name for name, _ in others))


def read_overrides(job_dir: Path) -> dict[str, str]:
    """``key -> value`` of the job's command-line (task) overrides, in order; ``+``/``++`` prefixes dropped."""
    items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+")] = value
    return out


def unfinished(job_dir: Path, metrics: dict[str, float]) -> str | None:
    """Why a job with a metrics.csv has not finished (failed, killed or still running), or None. A partial
    metrics.csv holds the val/ figures of some earlier step, which were averaged with the finished jobs' final ones
    as if they were final. Judged from the job's config.yaml: with ``test`` on, a finished job has test/ metrics;
    its ``checkpoints/last.ckpt`` has done ``model.train_steps``. Without config.yaml (runs copied without it)
    nothing is judged."""
    cfg_path = job_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    steps = (cfg.get("model") or {}).get("train_steps")
    last = job_dir / "checkpoints" / "last.ckpt"
    if steps is not None and last.is_file():
        from neuralsde.checkpoints import read_checkpoint
        from neuralsde.errors import CheckpointError

        try:
            done = int(read_checkpoint(last)["neuralsde"].get("train_step", 0))
        except CheckpointError as err:
            return f"unreadable checkpoints/last.ckpt ({err})"
        if done < int(steps):
            return f"unfinished: trained {done} of model.train_steps={steps} steps (failed, killed or still running)"
    if cfg.get("test") and not any(k.startswith("test/") for k in metrics):
        return "unfinished: no test/ metrics though test=true (failed, killed or still running)"
    return None


FAILED_MARK = ") failed: "  # neuralsde.hydra_callbacks.ReportFailedJob: "Sweep job N (<overrides>) failed: <error>"


def logged_failure(job_dir: Path, limit: int = 300) -> str | None:
    """The error a failed sweep job logged into its ``train.log`` (``ReportFailedJob``), first line only, or None:
    "no csv/metrics.csv (job failed, ...)" sent the user to open every job's log to learn why. A failure older than
    the job's metrics.csv or last checkpoint is None: a ``resume=auto`` rerun appends to the same train.log, and a
    job still running (or stopped) after an earlier failed attempt was reported as failed with that attempt's error."""
    log_path = job_dir / "train.log"
    if not log_path.is_file():
        return None
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        head, mark, error = line.partition(FAILED_MARK)
        if mark and "Sweep job " in head:
            if _written_after(job_dir, head):
                return None
            error = error.rpartition(" (its directory: ")[0] or error
            return error if len(error) <= limit else error[:limit - 3] + "..."
    return None


def _written_after(job_dir: Path, head: str) -> bool:
    """Whether the job wrote metrics or a checkpoint after the log line whose start is ``head`` (Hydra's
    ``[%(asctime)s]...``, local time; a line without it: False)."""
    from datetime import datetime

    try:
        logged = datetime.strptime(head[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return False
    written = [p.stat().st_mtime for p in (job_dir / "csv" / "metrics.csv", job_dir / "checkpoints" / "last.ckpt")
               if p.is_file()]
    return any(t > logged + 1.0 for t in written)  # a second's slack: the failing attempt's own last writes


def default_metrics(columns) -> list[str]:
    """val/ and test/ metrics (without bootstrap bounds) and the step time: what the paper tables compare."""
    keep = [c for c in columns if c.startswith(("val/", "test/")) and not c.endswith(("_ci_low", "_ci_high"))]
    return (["train/step_time"] if "train/step_time" in columns else []) + sorted(keep)


def collect(multirun_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per usable job: ``job``, the overrides (``ov:<key>`` columns) and the metrics.
    Returns ``(jobs, skipped)``, ``skipped`` being human-readable reasons. Raises ``AggregateError``."""
    root = Path(multirun_dir)
    fix = ("Fix: pass the folder of one multirun, e.g. logs/train/multiruns/<timestamp> "
           "(the one holding multirun.yaml and the job folders 0/, 1/, ...).")
    if not root.is_dir():
        raise AggregateError(f"MULTIRUN_DIR {str(root)!r} does not exist or is not a directory. {fix}")
    refuse_single_run(root, fix)
    # eval.py and sample.py runs have a .hydra/ too; counted as jobs they were reported as failed ones
    others, jobs = [], []
    for job in find_jobs(root):
        script = other_script(job)
        if script:
            others.append((str(job.relative_to(root)), script))
        else:
            jobs.append(job)
    if not jobs:
        left = f" ({not_training_note(others)})" if others else ""
        raise AggregateError(f"No job directories (training runs with .hydra/overrides.yaml) under {str(root)!r}"
                             f"{left}. {fix}")
    rows, skipped = [], []
    for job in jobs:
        csv_path = job / "csv" / "metrics.csv"
        name = str(job.relative_to(root))
        overrides = {f"ov:{k}": v for k, v in read_overrides(job).items()}
        label = " ".join(f"{k[3:]}={v}" for k, v in overrides.items())
        # a skipped job keeps its row (no metrics, SKIP its reason): its configuration counts it, so a
        # configuration whose jobs all failed still has a row instead of vanishing from the table
        metrics, reason = {}, None
        if not csv_path.is_file():
            reason = "no csv/metrics.csv (job failed, still running, or logger without csv)"
        else:
            try:
                metrics = read_metrics(csv_path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
                reason = f"unreadable csv/metrics.csv ({type(err).__name__}: {err})"
            reason = reason or unfinished(job, metrics)
        if reason:
            error = logged_failure(job)
            if error:  # what the job logged is the cause; an unfinished job's count of steps stays beside it
                reason = f"failed: {error}" if reason.startswith("no csv") else f"{reason}; failed: {error}"
            skipped.append(f"{name}: {reason}; overrides: {label or '(none)'}")
            metrics = {}
        bad = ",".join(k for k, v in metrics.items() if not math.isfinite(v))
        rows.append({"job": name, SKIP: reason or "", NONFINITE: bad, **overrides, **metrics})
    if all(r[SKIP] for r in rows):
        raise AggregateError(f"None of the {len(jobs)} jobs under {str(root)!r} has finished with a readable "
                             "csv/metrics.csv:\n  "
                             + "\n  ".join(skipped) + "\nFix: check the jobs' train.log for the error, "
                             "and run with the csv logger (logger=csv or logger=many).")
    frame = pd.DataFrame(rows)
    frame.attrs[NOT_TRAINING] = others
    return frame, skipped


def metric_columns(jobs: pd.DataFrame) -> list[str]:
    return [c for c in jobs.columns if c not in ("job", SKIP, NONFINITE) and not c.startswith("ov:")]


def summarise(jobs: pd.DataFrame, metrics: list[str] | None = None, ignore: tuple[str, ...] = ("seed",),
              skip_unknown: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Group ``jobs`` (from ``collect``) by their overrides minus ``ignore``.

    Returns ``(table, common)``: ``table`` has ``config`` (the overrides that vary between configurations,
    or ``all`` when there is one), ``n`` (finished jobs), ``skipped`` (the others), ``seeds``, then
    ``<metric>_mean``, ``<metric>_std``, ``<metric>_n`` per metric; ``common`` are the overrides shared by
    every job (ignored keys excluded). A metric no job logged is an error, or dropped with ``skip_unknown``."""
    ov_cols = [c for c in jobs.columns if c.startswith("ov:")]
    group_cols = [c for c in ov_cols if c[3:] not in ignore]
    frame = jobs.copy()
    frame[ov_cols] = frame[ov_cols].fillna("<unset>")
    varying = [c for c in group_cols if frame[c].nunique() > 1]
    common = {c[3:]: frame[c].iloc[0] for c in group_cols if c not in varying}
    metric_cols = metric_columns(jobs)
    for col in (SKIP, NONFINITE):
        if col not in frame:
            frame[col] = ""
    if metrics is None:
        metrics = default_metrics(metric_cols)
    unknown = [m for m in metrics if m not in metric_cols]
    if skip_unknown:
        metrics = [m for m in metrics if m in metric_cols]
    elif unknown:
        raise AggregateError(f"No job logged {unknown}. Logged metrics: {sorted(metric_cols)}. "
                             "Fix: pick --metrics from these.")
    rows = []
    groups = frame.groupby(varying, sort=False, dropna=False) if varying else [((), frame)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(f"{c[3:]}={v}" for c, v in zip(varying, key, strict=True)) or "all"
        n_skipped = int((part[SKIP] != "").sum())
        part = part[part[SKIP] == ""]
        seeds = ",".join(part["ov:seed"].astype(str)) if "ov:seed" in part else ""
        row = {"config": label, **{c[3:]: v for c, v in zip(varying, key, strict=True)}, "n": len(part),
               "skipped": n_skipped, "seeds": seeds}
        for m in metrics:
            # a NaN or inf cannot enter a mean; it is counted (<m>_nonfinite) and shown, never dropped unsaid
            values = part[m].dropna() if m in part else pd.Series(dtype=float)
            values = values[values.map(math.isfinite)]
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{m}_n"] = len(values)
            row[f"{m}_nonfinite"] = sum(m in bad.split(",") for bad in part[NONFINITE])
        rows.append(row)
    return pd.DataFrame(rows), common


def _fmt(mean: float, std: float, n: int, n_jobs: int, nonfinite: int = 0) -> str:
    if n == 0 and not nonfinite:
        return "—"  # not logged by this configuration
    text = "—" if n == 0 else f"{mean:.4g}" if not math.isfinite(std) else f"{mean:.4g} ± {std:.2g}"
    # flag a metric some jobs did not log, or logged as NaN/inf
    notes = ([f"n={n}"] if n != n_jobs and n else []) + ([f"{nonfinite} NaN/inf"] if nonfinite else [])
    return f"{text} ({'; '.join(notes)})" if notes else text


def to_markdown(table: pd.DataFrame, metrics: list[str], common: dict[str, str] | None = None) -> str:
    header = ["config", "n", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        skipped = r.get("skipped", 0)
        cells = [f"`{r['config']}`", f"{r['n']} (+{skipped} skipped)" if skipped else str(r["n"])]
        cells += [_fmt(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_n"], r["n"], r.get(f"{m}_nonfinite", 0))
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if common:
        lines.append("\nShared by every job: " + " ".join(f"`{k}={v}`" for k, v in common.items()))
    return "\n".join(lines) + "\n"


def aggregate(multirun_dir: str | Path, out: str | Path | None = None, metrics: list[str] | None = None,
              ignore: tuple[str, ...] = ("seed",), skip_unknown: bool = False) -> tuple[pd.DataFrame, str, list[str]]:
    """Collect, summarise and write ``<out>.md`` and ``<out>.csv``; return ``(table, markdown, skipped)``."""
    jobs, skipped = collect(multirun_dir)
    table, common = summarise(jobs, metrics, ignore, skip_unknown)
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    text = to_markdown(table, metrics, common)
    # which std, over what: a table copied into a paper must say it (the CSV's columns are <metric>_mean/_std/_n)
    pooled = ", ".join(f"`{k}`" for k in ignore) or "nothing"
    text += (f"\nCells: mean ± sample standard deviation (n − 1 denominator) over a configuration's n finished jobs, "
             f"pooled over {pooled}; a value without ± is one job's; (n=k): only k of them logged the metric.\n")
    done = jobs[jobs[SKIP] == ""]
    ov_cols = [c for c in done.columns if c.startswith("ov:")]
    same = done.fillna({c: "<unset>" for c in ov_cols}).groupby(ov_cols)["job"].apply(list) if ov_cols else \
        pd.Series([list(done["job"])])
    twins = [jobs_ for jobs_ in same if len(jobs_) > 1]
    if twins:  # e.g. a folder holding a sweep and a copy of it: one run counted twice narrows the std
        text += ("\nJobs with the same overrides, the same run repeated (bit-identical on CPU), each counted in n: "
                 + "; ".join(", ".join(t) for t in twins) + ". Fix: aggregate one copy of each.\n")
    bad = [(r["job"], m, r[m]) for _, r in jobs[jobs[NONFINITE] != ""].iterrows() for m in metrics
           if m in r[NONFINITE].split(",")]
    if bad:
        text += "\nNaN/inf last values (left out of the means):\n" + "".join(f"- {j}: {m}={v}\n" for j, m, v in bad)
    others = jobs.attrs.get(NOT_TRAINING)
    if others:
        text += "\n" + not_training_note(others) + ".\n"
    if skipped:
        text += "\nSkipped jobs:\n" + "".join(f"- {s}\n" for s in skipped)
    prefix = Path(out) if out else Path(multirun_dir) / "summary"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text(text)
    table.to_csv(f"{prefix}.csv", index=False)
    return table, text, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir")
    parser.add_argument("--out", help="output prefix: writes PREFIX.md and PREFIX.csv (default MULTIRUN_DIR/summary)")
    parser.add_argument("--metrics", help="comma-separated metric keys, in column order (default: val/, test/ "
                                          "metrics and train/step_time)")
    parser.add_argument("--all-metrics", action="store_true", help="every logged metric column")
    parser.add_argument("--ignore", default="seed", help="comma-separated override keys not to group by")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    ignore = tuple(k.strip() for k in args.ignore.split(",") if k.strip())
    try:
        if args.all_metrics:
            jobs, _ = collect(args.multirun_dir)
            metrics = metric_columns(jobs)
        _, text, skipped = aggregate(args.multirun_dir, args.out, metrics, ignore)
    except AggregateError as err:
        print(f"aggregate.py: {err}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"aggregate.py: skipped {s}", file=sys.stderr)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
