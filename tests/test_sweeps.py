"""Sweeps: a real 2-job multirun and its aggregation; launcher and sweeper configs; aggregate.py and
paper_tables.py on bad or synthetic input. Real launches through joblib, submitit and optuna are slow tests."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from neuralsde.metrics import METRICS
from tests.conftest import CONFIG_DIR, ROOT, compose_config

sys.path.insert(0, str(ROOT / "scripts"))
import aggregate as agg  # noqa: E402

TINY = ["trainer.accelerator=cpu", "data.source.n_paths=64",  # bit-identity is a CPU claim
         "data.source.t_size=16", "data.batch_size=16", "data.eval_batch_size=32",
        "model.train_steps=2", "model.swa_start=1", "trainer.val_check_interval=1",
        "callbacks.metrics.val_metrics=[sig_mmd]", "callbacks.metrics.test_metrics=[sig_mmd]",
        "callbacks.metrics.n_samples=32", "extras.print_config=false", "test=true"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "2"}


def train_py(*overrides: str, timeout: int = 600, cwd=ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def script(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def hydra_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


# --- a real multirun (basic launcher) and its aggregation ------------------------------------------------
@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    # As a user types it, from the directory the runs go under: no sweep directory given, so the sweeper resolves
    # the default one (under paths.root_dir) before any job has a Hydra config.
    start = tmp_path_factory.mktemp("multirun")
    train_py("-m", "seed=0,1", *TINY, cwd=start)
    (sweep,) = (start / "logs" / "train" / "multiruns").iterdir()
    return sweep


def test_multirun_gives_each_job_its_own_dir(multirun):
    assert (multirun / "multirun.yaml").is_file()
    for num, seed in (("0", 0), ("1", 1)):
        job = multirun / num
        assert (job / "csv" / "metrics.csv").is_file()
        assert f"seed={seed}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert (job / "config.yaml").is_file()
    assert not (multirun / "2").exists()


def test_aggregate_cli_on_multirun(multirun, tmp_path):
    proc = script("aggregate.py", str(multirun), "--out", str(tmp_path / "summary"),
                  "--metrics", "test/sig_mmd,val/sig_mmd,train/step_time")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "summary.csv")
    assert len(table) == 1 and table.loc[0, "n"] == 2 and str(table.loc[0, "seeds"]) == "0,1"
    for m in ("test/sig_mmd", "val/sig_mmd", "train/step_time"):
        assert math.isfinite(table.loc[0, f"{m}_mean"]) and math.isfinite(table.loc[0, f"{m}_std"])
    md = (tmp_path / "summary.md").read_text()
    assert "| `all` | 2 |" in md and " ± " in md and md in proc.stdout


def test_a_sweep_job_reruns_bit_identically_as_a_single_run(multirun, tmp_path):
    # README ("Reruns are exact on CPU"): the same command again, here outside the sweep, gives the same metrics
    # (but the timing columns) and the same weights, optimiser states included
    import torch

    train_py("seed=0", *TINY, f"hydra.run.dir={tmp_path / 'again'}")
    timing = ["train/step_time", "train/steps_per_s"]
    first, again = (pd.read_csv(d / "csv" / "metrics.csv").drop(columns=timing) for d in (multirun / "0",
                                                                                            tmp_path / "again"))
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            for d in (multirun / "0", tmp_path / "again"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert all(torch.equal(x, sb["state"][i][n]) for i, st in sa["state"].items() for n, x in st.items()
                   if torch.is_tensor(x))


def test_a_resume_auto_rerun_numbered_otherwise_is_refused(multirun, tmp_path):
    # `-m seed=1 resume=auto` into the sweep of seed=0,1: its job 0 met seed 0's finished run in 0/, returned that
    # run's metrics as seed 1's, and Hydra relabelled 0/ with seed=1, so aggregate.py reported seed 0's metrics twice
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(multirun, sweep)
    before = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "seed=1", *TINY, "resume=auto",
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"ConfigError: sweep job 0 would continue the run in '{sweep / '0'}' (resume=auto), but that run was "
            "trained with seed=0 (this job: seed=1):") in proc.stderr and "Fix:" in proc.stderr
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text() == before
    # job numbers naming runs with another learning rate (a reordered -m model.optimizer.g_lr=...): refused too,
    # where a finished run would be returned as the job's result
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "seed=0,1", *TINY, "resume=auto",
                           "model.optimizer.g_lr=0.5", f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ("trained with model.optimizer.g_lr=0.01 (this job: model.optimizer.g_lr=0.5)" in proc.stderr)
    # the same command as the first (job numbers naming the same runs) goes on: both jobs have finished
    train_py("-m", "seed=0,1", *TINY, "resume=auto", f"hydra.sweep.dir={sweep}")
    assert "seed=0" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("sweep, error", [
    # trainer.max_epochs=-1,1 trained job 0 to the end before job 1 was refused (on SLURM: hours later)
    (["trainer.max_epochs=-1,1"], "sweep job 1 (trainer.max_epochs=1) would fail, so no job was started: "
                                  "trainer.max_epochs=1 has no effect here"),
    (["seed=0,1", "threads=1,0"], "sweep job 1 (seed=0 threads=0) would fail, so no job was started: threads=0 is "
                                  "not valid: expected a positive integer"),
    # one directory for every job: job 1 was refused after job 0 trained, and had replaced job 0's .hydra/ record
    (["seed=0,1", "hydra.sweep.subdir=run"], "sweep jobs 0 (seed=0) and 1 (seed=1) would share the output "
                                             "directory"),
    # under tmp_path ({tmp}): a check that let it through wrote job 0's run into a shared /tmp/one_dir
    (["seed=0,1", "paths.output_dir={tmp}/one_dir"], "sweep jobs 0 (seed=0) and 1 (seed=1) would share the output "
                                                     "directory '{tmp}/one_dir'"),
])
def test_a_bad_later_job_stops_the_sweep_before_the_first_job(sweep, error, tmp_path):
    sweep, error = [s.format(tmp=tmp_path) for s in sweep], error.format(tmp=tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *TINY, *sweep,
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"ConfigError: {error}" in proc.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "one_dir").exists()  # before Hydra wrote anything


def test_sample_sweep_with_one_out_file_is_refused_up_front(tmp_path):
    """sample.py -m ckpt_path=a,b out=x.csv: job 1 found x.csv after job 0 had sampled (with overwrite=true it
    replaced job 0's paths)."""
    out = tmp_path / "x.csv"
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / name).write_bytes(b"")  # only their existence is checked before the sweep
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), "-m", "ckpt_path=a.ckpt,b.ckpt", f"out={out}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"ConfigError: sweep jobs 0 (ckpt_path=a.ckpt) and 1 (ckpt_path=b.ckpt) would share the out file "
            f"'{out}'") in proc.stderr and "Fix: give each job its own file" in proc.stderr


def test_eval_sweep_with_a_missing_checkpoint_is_refused_up_front(tmp_path):
    """eval.py -m ckpt_path=a,b with b mistyped: job 1 failed after job 0's whole metric suite (minutes)."""
    (tmp_path / "a.ckpt").write_bytes(b"")  # only its existence is checked before the sweep
    ckpts = f"ckpt_path={tmp_path}/a.ckpt,{tmp_path}/b.ckpt"
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "-m", ckpts, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"CheckpointError: sweep job 1 (ckpt_path={tmp_path}/b.ckpt) would fail, so no job was started: "
            f"Checkpoint '{tmp_path}/b.ckpt' does not exist.") in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_sample_sweep_jobs_are_checked_for_their_checkpoint_file(tmp_path):
    """The check CheckSweepJobs makes on each sample.py job (as on eval.py's above; in-process, no sweep)."""
    from neuralsde.config_checks import check_job
    from neuralsde.errors import CheckpointError
    from tests.conftest import compose_config

    cfg = compose_config([f"ckpt_path={tmp_path}/b.ckpt", f"out={tmp_path}/s.csv"], config_name="sample")
    with pytest.raises(CheckpointError, match=r"b.ckpt' does not exist"):
        check_job(cfg)


# --- composition of the launcher and sweeper configs -----------------------------------------------------
@pytest.mark.parametrize("launcher, target", [
    ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
])
def test_launchers_compose(launcher, target):
    cfg = hydra_cfg([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target
    assert cfg.seed == 0 and cfg.model._target_ == "sdegan.module.SDEGAN"  # the job config is untouched


def test_slurm_launcher_values_and_overrides():
    launcher = hydra_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                          "hydra.launcher.timeout_min=30"]).hydra.launcher
    assert launcher.partition == "gpu" and launcher.timeout_min == 30
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.cpus_per_task == 4
    assert launcher.mem_gb == 16 and launcher.array_parallelism == 32
    assert "export WANDB_MODE=offline" in launcher.setup


def test_slurm_params_make_a_valid_sbatch_script(tmp_path, monkeypatch):
    """What the plugin hands submitit (same key mapping as SlurmLauncher.launch) is accepted and lands in
    the sbatch script; no cluster needed: submitit's srun check is patched out."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    cfg = hydra_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    params.pop("_target_")
    params.pop("submitit_folder")
    params["name"] = "train"
    params["setup"] = [s.replace("${hydra.launcher.cpus_per_task}", "4") for s in params["setup"]]
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop(
        "max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "export WANDB_MODE=offline",
                 "export OMP_NUM_THREADS=4"):
        assert line in text, text


@pytest.mark.parametrize("direction, refused", [(None, True), ("minimize", True), ("maximize", False)])
def test_an_optuna_sweep_minimising_the_elbo_is_refused(direction, refused, capsys):
    """Optuna minimises by default and the latent SDE experiments optimise val/elbo: the sweep ran every trial and
    reported the one with the lowest ELBO, the worst model, as its best."""
    from neuralsde.hydra_callbacks import CheckSweepJobs

    cfg = hydra_cfg(["experiment=ou_latent_sde", "hydra/sweeper=optuna"]
                    + ([f"hydra.sweeper.direction={direction}"] if direction else []))
    if refused:
        with pytest.raises(SystemExit) as exit_info:
            CheckSweepJobs().on_multirun_start(cfg)
        assert exit_info.value.code == 2
        assert ("optimized_metric=val/elbo is higher-is-better, but hydra.sweeper.direction=minimize"
                in capsys.readouterr().err)
    else:
        CheckSweepJobs().on_multirun_start(cfg)
    CheckSweepJobs().on_multirun_start(hydra_cfg(["hydra/sweeper=optuna"]))  # val/sig_mmd: lower is better


def test_an_optuna_latent_sweep_stops_before_its_first_trial(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "experiment=ou_latent_sde",
                           "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", *TINY[:4], "model.train_steps=1",
                           "test=false", f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and "Fix: add hydra.sweeper.direction=maximize" in proc.stderr
    assert not (tmp_path / "0").exists()


def test_sweeps_minimise_the_biased_signature_mmd_by_default():
    """The unbiased val/sig_mmd goes far below zero for exploding samples: a sweep minimising it picked them."""
    from neuralsde.metrics.suite import METRICS

    cfg = compose_config([])
    assert cfg.optimized_metric == "val/sig_mmd_biased"
    assert "sig_mmd_biased" in METRICS["sig_mmd"].keys


def test_optuna_search_composes():
    cfg = hydra_cfg(["hparams_search=ou_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # the biased MMD², >= 0: the unbiased val/sig_mmd scores exploding generators hugely negative
    assert cfg.optimized_metric == "val/sig_mmd_biased" and sweeper.direction == "minimize"
    stage, _, key = cfg.optimized_metric.partition("/")
    assert stage == "val" and key in {k for name in cfg.callbacks.metrics.val_metrics for k in METRICS[name].keys}
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 1234
    assert sweeper.storage is None and sweeper.n_trials >= 10
    assert set(sweeper.params) == {"model.optimizer.g_lr", "model.optimizer.d_lr", "model.generator.hidden_size"}
    # every searched key exists in the job config (a typo would only fail at the first trial)
    assert cfg.model.optimizer.g_lr > 0 and cfg.model.optimizer.d_lr > 0 and cfg.model.generator.hidden_size > 0


# --- aggregate.py on synthetic multiruns and bad input ---------------------------------------------------
def fake_job(root, num, overrides, rows):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rows is not None:
        (job / "csv").mkdir()
        pd.DataFrame(rows).to_csv(job / "csv" / "metrics.csv", index=False)
    return job


def fake_rows(step_times, final):
    rows = [{"step": i, "train/step_time": t} for i, t in enumerate(step_times)]
    rows.append({"step": len(step_times), "val/sig_mmd": final + 1.0})
    rows.append({"step": len(step_times) + 1, "val/sig_mmd": final, "test/sig_mmd": 2 * final})
    rows.append({"step": len(step_times) + 2, "train/step_time": float("nan")})  # trailing NaN is skipped
    return rows


def test_aggregate_groups_by_overrides_minus_seed(tmp_path):
    num = 0
    for solver, base in (("reversible_heun", 1.0), ("midpoint", 3.0)):
        for seed in (0, 1, 2):
            fake_job(tmp_path, num, [f"solver={solver}", f"seed={seed}", "model.train_steps=5"],
                     fake_rows([100.0, base, base, base + seed], base + seed))
            num += 1
    fake_job(tmp_path, num, ["solver=midpoint", "seed=3", "model.train_steps=5"], None)  # a failed job
    table, text, skipped = agg.aggregate(tmp_path, tmp_path / "out" / "s")
    assert list(table["config"]) == ["solver=reversible_heun", "solver=midpoint"]
    assert list(table["n"]) == [3, 3]
    rh = table.iloc[0]
    assert rh["val/sig_mmd_mean"] == pytest.approx(2.0) and rh["val/sig_mmd_std"] == pytest.approx(1.0)
    assert rh["test/sig_mmd_mean"] == pytest.approx(4.0)
    # step time: the median per run (1, 1.5, 2 for seeds 0, 1, 2: the 100 s first step does not count)
    assert rh["train/step_time_mean"] == pytest.approx(1.5)
    assert len(skipped) == 1 and skipped[0].startswith("6: no csv/metrics.csv")
    assert "Shared by every job: `model.train_steps=5`" in text and "Skipped jobs" in text
    assert (tmp_path / "out" / "s.md").is_file() and (tmp_path / "out" / "s.csv").is_file()


def test_aggregate_quotes_the_error_a_failed_job_logged(tmp_path):
    """Was: "no csv/metrics.csv (job failed, still running, ...)" for each, and the user opened every train.log."""
    fake_job(tmp_path, 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}])
    failed = fake_job(tmp_path, 1, ["seed=1", "solver.dt=0.3"], None)
    (failed / "train.log").write_text(
        "[2026-12-01 10:00:00,000][neuralsde.training][INFO] - Resolved config:\n"
        "[2026-12-01 10:00:05,000][neuralsde.hydra_callbacks][ERROR] - Sweep job 1 (seed=1 solver.dt=0.3) failed: "
        f"ConfigError: solver.dt=0.3 does not divide the gap (steps land on 1.2). Fix: use 0.25 (its directory: "
        f"{failed})\n")
    stopped = fake_job(tmp_path, 2, ["seed=2"], [{"step": 0, "val/sig_mmd": 1.0}])  # no failure line: as before
    (stopped / "train.log").write_text("[2026-12-01 10:00:00,000][neuralsde.training][INFO] - Resolved config:\n")
    (tmp_path / "3").mkdir()
    _, _, skipped = agg.aggregate(tmp_path)
    assert skipped == ["1: failed: ConfigError: solver.dt=0.3 does not divide the gap (steps land on 1.2). Fix: use "
                       "0.25; overrides: seed=1 solver.dt=0.3"]


def test_aggregate_does_not_quote_an_earlier_attempts_failure(tmp_path):
    """A resume=auto rerun appends to the job's train.log: a job running again (here: no test/ metrics yet) after
    a failed attempt was listed with that attempt's error, as failed."""
    import os
    import time

    job = fake_job(tmp_path, 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}])
    (job / "config.yaml").write_text("test: true\n")
    earlier = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 3600))
    (job / "train.log").write_text(f"[{earlier},000][neuralsde.hydra_callbacks][ERROR] - Sweep job 0 (seed=0) failed: "
                                   "RuntimeError: CUDA out of memory (its directory: /x)\n")
    fake_job(tmp_path, 1, ["seed=1"], [{"step": 0, "val/sig_mmd": 1.0}])
    reason = "0: unfinished: no test/ metrics though test=true (failed, killed or still running)"
    assert agg.aggregate(tmp_path)[2] == [f"{reason}; overrides: seed=0"]
    # the same line written after the metrics is this attempt's failure
    csv = job / "csv" / "metrics.csv"
    os.utime(csv, (time.time() - 7200, time.time() - 7200))
    assert agg.aggregate(tmp_path)[2] == [f"{reason}; failed: RuntimeError: CUDA out of memory; overrides: seed=0"]


def test_aggregate_flags_a_metric_some_jobs_lack(tmp_path):
    fake_job(tmp_path, 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0, "test/sig_mmd": 2.0}])
    fake_job(tmp_path, 1, ["seed=1"], [{"step": 0, "val/sig_mmd": 3.0}])
    _, text, _ = agg.aggregate(tmp_path)
    assert "| `all` | 2 | 2 (n=1) | 2 ± 1.4 |" in text


def test_aggregate_cli_errors(tmp_path, capsys):
    missing = tmp_path / "nope"
    proc = script("aggregate.py", str(missing))  # one real process: the exit status
    assert proc.returncode == 2 and str(missing) in proc.stderr and "Fix:" in proc.stderr
    (tmp_path / "empty").mkdir()
    assert agg.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "No job directories" in err and str(tmp_path / "empty") in err and "Fix:" in err
    fake_job(tmp_path / "failed", 0, ["seed=0"], None)
    assert agg.main([str(tmp_path / "failed")]) == 2
    assert "0: no csv/metrics.csv" in capsys.readouterr().err
    fake_job(tmp_path / "ok", 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}])
    assert agg.main([str(tmp_path / "ok"), "--metrics", "val/sig_mdm"]) == 2
    err = capsys.readouterr().err
    assert "val/sig_mdm" in err and "val/sig_mmd" in err


def test_aggregate_script_reads_with_its_own_checkouts_package(tmp_path):
    # It imported neuralsde from wherever it was installed (an editable install of another checkout: that one's
    # reading of metrics.csv); the repository was put on sys.path only later, for reading checkpoints, too late.
    import shutil

    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "neuralsde", copy / "neuralsde", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "aggregate.py", copy / "scripts")
    with open(copy / "neuralsde" / "run_metrics.py", "a") as f:
        f.write("\nimport sys\nprint('this checkout', file=sys.stderr)\n")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(copy / "scripts" / "aggregate.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "this checkout" in proc.stderr, proc.stderr[-2000:]


# --- paper_tables.py ------------------------------------------------------------------------------------
def test_paper_tables_aggregate_only_without_runs_writes_nothing(tmp_path):
    (tmp_path / "paper_tables.md").write_text("earlier tables\n")
    proc = script("paper_tables.py", "--aggregate-only", "--results", str(tmp_path))
    assert proc.returncode == 2 and "no runs to aggregate" in proc.stderr and "Fix:" in proc.stderr
    assert (tmp_path / "paper_tables.md").read_text() == "earlier tables\n"


def test_paper_tables_says_the_runs_threads(tmp_path):
    # table (a)'s step times come from ou_sdegan's threads=1 runs; the page gave only this process's default (2)
    import paper_tables

    table_a = tmp_path / "cpu" / "table_a"
    for num, solver in enumerate(("reversible_heun", "midpoint")):
        job = fake_job(table_a, num, [f"solver={solver}", "seed=0"],
                       [{"step": 0, "train/step_time": 0.1, "val/sig_mmd": 1.0, "test/sig_mmd": 1.0}])
        (job / "config.yaml").write_text("threads: 1\ntest: true\n")
    assert paper_tables.main(["--aggregate-only", "--tables", "a", "--results", str(tmp_path)]) == 0
    md = (tmp_path / "paper_tables.md").read_text()
    assert "Torch threads per run: 1 (`threads`)." in md and "torch's default threads" in md


def test_paper_tables_dry_run_prints_the_commands():
    proc = script("paper_tables.py", "--dry-run", "--seeds", "0,1", "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("python train.py -m")]
    has_latent = (ROOT / "configs" / "experiment" / "ou_latent_sde.yaml").is_file()
    assert len(lines) == (3 if has_latent else 2)
    assert "solver=reversible_heun,midpoint" in lines[0] and "hydra.sweep.dir=results/cpu/table_a" in lines[0]
    assert "model.lipschitz=clip,gradient_penalty" in lines[1]
    assert all("seed=0,1" in line and "model.train_steps=4" in line for line in lines)
    paper = script("paper_tables.py", "--dry-run", "--scale", "paper", "--tables", "a")
    assert "experiment=ou_sdegan_paper" in paper.stdout and "model.train_steps" not in paper.stdout


def test_paper_tables_prints_each_job_as_hydra_starts_it(tmp_path, capsys):
    # a table's multirun writes to its log alone: for 10-20 minutes the terminal showed only "running ..."
    import paper_tables

    fake_multirun = ("import time; print('[HYDRA] Launching 2 jobs locally', flush=True); "
                     "print('[HYDRA] \\t#0 : experiment=ou_sdegan solver=reversible_heun seed=0 model.train_steps=4', "
                     "flush=True); time.sleep(0.3); "
                     "print('epoch 0: 100%|##########| 4/4', flush=True); "
                     "print('[HYDRA] \\t#1 : solver=midpoint seed=0', end='', flush=True)")
    rc, _ = paper_tables.run([sys.executable, "-c", fake_multirun], tmp_path / "multirun.log", label="(a) ",
                             poll_s=0.05, show={"solver", "seed"})
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2, out
    assert out[0].startswith("(a) job 1/2: solver=reversible_heun seed=0 (at ") and out[0].endswith(" min)")
    assert out[1].startswith("(a) job 2/2: solver=midpoint seed=0 (at ")
    assert "epoch 0" in (tmp_path / "multirun.log").read_text()


# --- real launches through the plugins (slow) ------------------------------------------------------------
@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs(tmp_path):
    train_py("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY, "test=false",
             f"hydra.sweep.dir={tmp_path}")
    assert all((tmp_path / n / "csv" / "metrics.csv").is_file() for n in ("0", "1"))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path):
    train_py("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0", *TINY,
             "test=false", f"hydra.sweep.dir={tmp_path}")
    assert (tmp_path / "0" / "csv" / "metrics.csv").is_file()
    assert (tmp_path / ".submitit").is_dir()


@pytest.mark.slow
def test_optuna_two_trials(tmp_path):
    train_py("hparams_search=ou_optuna", "hydra.sweeper.n_trials=2", *TINY, "test=false",
             f"hydra.sweep.dir={tmp_path}")
    result = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_value" in result and "model.optimizer.g_lr" in result


@pytest.mark.slow
def test_paper_tables_smoke(tmp_path):
    tiny = [o for o in TINY if not o.startswith(("model.", "trainer.", "test="))]
    proc = script("paper_tables.py", "--tables", "a", "--seeds", "0", "--steps", "1", "--results",
                  str(tmp_path), "--", *tiny, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (tmp_path / "paper_tables.md").read_text()
    assert "solver=reversible_heun" in md and "solver=midpoint" in md and "## Machine" in md


def test_aggregate_folder_with_jobs_at_several_depths(tmp_path):
    # a sweep's jobs beside an older sweep copied into a subfolder: sorting compared 0 with 'old' (TypeError)
    for num in (0, 2, 10):
        fake_job(tmp_path, num, [f"seed={num}"], [{"step": 0, "val/sig_mmd": float(num)}])
    fake_job(tmp_path / "old", 0, ["seed=0", "solver=midpoint"], [{"step": 0, "val/sig_mmd": 5.0}])
    jobs, _ = agg.collect(tmp_path)
    assert list(jobs["job"]) == ["0", "2", "10", "old/0"]


def test_aggregate_leaves_out_unfinished_jobs_and_counts_them(tmp_path):
    # a job killed at step 2 of 4 (or still running) has a metrics.csv with an early val/ figure; it was averaged
    # with the finished jobs' final ones, n counting it, nothing said
    import torch

    def job(num, seed, solver, val, done, test=True):
        rows = [{"step": 0, "val/sig_mmd": val}] + ([{"step": 4, "test/sig_mmd": val}] if test else [])
        d = fake_job(tmp_path, num, [f"solver={solver}", f"seed={seed}"], rows)
        (d / "config.yaml").write_text(f"model:\n  train_steps: 4\ntest: {str(test).lower()}\n")
        (d / "checkpoints").mkdir()
        torch.save({"neuralsde": {"family": "sdegan", "train_step": done}, "state_dict": {}},
                   d / "checkpoints" / "last.ckpt")

    job(0, 0, "midpoint", 1.0, 4)
    job(1, 1, "midpoint", 3.0, 4)
    job(2, 2, "midpoint", 100.0, 2, test=False)  # killed at step 2: no test/ metrics, checkpoint short
    job(3, 0, "euler_heun", 100.0, 2, test=False)  # test=false: only its checkpoint tells
    job(4, 1, "euler_heun", 100.0, 4, test=True)
    (tmp_path / "4" / "csv" / "metrics.csv").write_text("step,val/sig_mmd\n0,100.0\n")  # died in its test stage
    table, text, skipped = agg.aggregate(tmp_path)
    mid, euler = table.iloc[0], table.iloc[1]
    assert (mid["n"], mid["skipped"], mid["seeds"]) == (2, 1, "0,1")
    assert mid["val/sig_mmd_mean"] == pytest.approx(2.0)
    assert (euler["n"], euler["skipped"]) == (0, 2) and math.isnan(euler["val/sig_mmd_mean"])
    assert "| `solver=midpoint` | 2 (+1 skipped) | 2 ± 1.4 |" in text
    assert "| `solver=euler_heun` | 0 (+2 skipped) | — |" in text
    assert skipped[0].startswith("2: unfinished: trained 2 of model.train_steps=4 steps")
    assert skipped[0].endswith("overrides: solver=midpoint seed=2")
    assert skipped[2].startswith("4: unfinished: no test/ metrics though test=true")
    assert len(skipped) == 3 and all(s in text for s in skipped)


def test_aggregate_reports_a_metric_that_ended_nan(tmp_path):
    # seed 2 diverged: its last val/sig_mmd is NaN (an earlier one 0.5) and its test/sig_mmd inf. The NaN was
    # read as "not logged" and the earlier 0.5 averaged in; the inf was averaged into an inf mean
    fake_job(tmp_path, 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}, {"step": 1, "test/sig_mmd": 1.0}])
    fake_job(tmp_path, 1, ["seed=1"], [{"step": 0, "val/sig_mmd": 3.0}, {"step": 1, "test/sig_mmd": 2.0}])
    job = fake_job(tmp_path, 2, ["seed=2"], [])
    # as Lightning's CSV logger writes them: a metric not logged at a row empty, a NaN as nan
    (job / "csv" / "metrics.csv").write_text("step,val/sig_mmd,test/sig_mmd\n0,0.5,\n1,nan,\n2,,inf\n")
    table, text, _ = agg.aggregate(tmp_path, metrics=["val/sig_mmd", "test/sig_mmd"])
    row = table.iloc[0]
    assert row["val/sig_mmd_mean"] == pytest.approx(2.0) and row["val/sig_mmd_n"] == 2
    assert row["val/sig_mmd_nonfinite"] == 1 and row["test/sig_mmd_mean"] == pytest.approx(1.5)
    assert "| `all` | 3 | 2 ± 1.4 (n=2; 1 NaN/inf) | 1.5 ± 0.71 (n=2; 1 NaN/inf) |" in text
    assert "- 2: val/sig_mmd=nan\n- 2: test/sig_mmd=inf\n" in text
    # a metric NaN in every job: shown as such, not as one nobody logged
    job = fake_job(tmp_path / "all_nan", 0, ["seed=0"], [])
    (job / "csv" / "metrics.csv").write_text("step,val/sig_mmd\n0,nan\n")
    _, text, _ = agg.aggregate(tmp_path / "all_nan")
    assert "| `all` | 1 | — (1 NaN/inf) |" in text


def test_aggregate_states_its_statistics_and_flags_repeated_runs(tmp_path):
    # the table did not say which std (a reader cannot tell sample from population, or a standard error); a folder
    # with a sweep and a copy of it pooled each run twice (n=4 from 2 seeds) without a word
    for root in (tmp_path, tmp_path / "copy"):
        for seed, val in ((0, 1.0), (1, 3.0)):
            fake_job(root, seed, [f"seed={seed}"], [{"step": 0, "val/sig_mmd": val}])
    table, text, _ = agg.aggregate(tmp_path)
    assert table.loc[0, "n"] == 4 and table.loc[0, "val/sig_mmd_std"] == pytest.approx(2 / math.sqrt(3))
    assert "mean ± sample standard deviation (n − 1 denominator) over a configuration's n finished jobs, pooled " \
           "over `seed`" in text
    assert "the same run repeated (bit-identical on CPU), each counted in n: 0, copy/0; 1, copy/1." in text
    _, text, _ = agg.aggregate(tmp_path / "copy")
    assert "same run repeated" not in text


def test_aggregate_refuses_a_single_run_directory(tmp_path, capsys):
    # given one run's folder it wrote summary.md/.csv into that run, a "table" of one job, without a word
    job = fake_job(tmp_path / "sweep", 0, ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}])
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    assert agg.main([str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{str(job)!r} is the directory of a single training run" in err and "not a multirun sweep" in err
    assert f"job of the sweep {str(tmp_path / 'sweep')!r}: pass that" in err and "Fix:" in err
    assert not (job / "summary.md").exists() and not (job / "summary.csv").exists()
    alone = fake_job(tmp_path, "run", ["seed=0"], [{"step": 0, "val/sig_mmd": 1.0}])  # a runs/ folder's run
    with pytest.raises(agg.AggregateError, match="single training run.*not a multirun sweep") as err:
        agg.aggregate(alone)
    assert "job of the sweep" not in str(err.value) and not (alone / "summary.md").exists()
    assert agg.aggregate(tmp_path / "sweep")[0].loc[0, "n"] == 1  # its sweep aggregates


def _other_run(root, name, kind, files):
    """A Hydra run folder of eval.py or sample.py: its composed config as Hydra saves it, and what the script wrote."""
    from omegaconf import OmegaConf

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.load(ROOT / "configs" / f"{kind}.yaml")
    cfg.pop("defaults"), cfg.pop("hydra")
    cfg.ckpt_path = "logs/train/runs/x/checkpoints/last.ckpt"
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path={cfg.ckpt_path}\n")
    for f in files:
        (run / f).write_text("{}\n")
    return run


def test_aggregate_leaves_out_eval_and_sample_runs_and_says_so(tmp_path, capsys):
    # a folder holding training runs beside eval.py and sample.py runs (each has .hydra/ too): those were listed as
    # failed jobs ("no csv/metrics.csv") and counted as skipped in a configuration's row
    for seed in (0, 1):
        fake_job(tmp_path, seed, [f"seed={seed}"], [{"step": 0, "val/sig_mmd": float(seed)}])
    _other_run(tmp_path, "eval_a", "eval", ["metrics.json", "eval.log"])
    _other_run(tmp_path, "sample_a", "sample", ["sample.log"])
    bare = tmp_path / "eval_b"  # no config.yaml (copied without it): known by metrics.json without checkpoints/
    (bare / ".hydra").mkdir(parents=True)
    (bare / ".hydra" / "overrides.yaml").write_text("- ckpt_path=x.ckpt\n")
    (bare / "metrics.json").write_text("{}\n")
    table, text, skipped = agg.aggregate(tmp_path)
    assert skipped == [] and list(table["n"]) == [2] and list(table["skipped"]) == [0]
    line = "Left out 3 folder(s) of eval.py/sample.py runs, not training jobs (2 eval.py, 1 sample.py): " \
           "eval_a, eval_b, sample_a."
    assert line in text.splitlines()
    assert agg.main([str(tmp_path)]) == 0 and line in capsys.readouterr().out
    # a failed training job (its config has model and data, nothing written) is still reported as failed
    failed = fake_job(tmp_path, 2, ["seed=2"], None)
    (failed / ".hydra" / "config.yaml").write_text("model: {}\ndata: {}\nseed: 2\n")
    assert agg.aggregate(tmp_path)[2][0].startswith("2: no csv/metrics.csv")
    # eval.py runs alone: nothing to aggregate, and the message says what was there
    only = tmp_path / "evals"
    _other_run(only, "e", "eval", ["metrics.json"])
    with pytest.raises(agg.AggregateError, match=r"No job directories.*Left out 1 folder\(s\).*\(1 eval.py\): e"):
        agg.collect(only)
