"""A refused rerun into a used run or sweep directory leaves the old run's record untouched: Hydra wrote the new
command's .hydra/overrides.yaml (and multirun.yaml) before the job refused, so aggregate.py labelled the old
job's metrics with overrides it never ran with."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def used_run(run_dir: Path) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / ".hydra").mkdir()
    overrides = run_dir / ".hydra" / "overrides.yaml"
    overrides.write_text("- model.train_steps=5\n")
    return overrides


def train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_single_run_into_used_dir_keeps_its_record(tmp_path):
    overrides = used_run(tmp_path / "run")
    res = train_py("model.train_steps=9", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "ConfigError: The run directory" in res.stderr and "already holds a run with checkpoints" in res.stderr
    assert "Fix:" in res.stderr and "ckpt_path=" in res.stderr
    assert "Traceback" not in res.stderr
    assert overrides.read_text() == "- model.train_steps=5\n"
    assert not (tmp_path / "run" / "train.log").exists()


def test_sweep_into_used_dir_keeps_its_jobs_records(tmp_path):
    overrides = used_run(tmp_path / "sweep" / "0")
    (tmp_path / "sweep" / "multirun.yaml").write_text("old")
    res = train_py("-m", "seed=0,1", "model.train_steps=9", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "hydra.sweep.dir=" in res.stderr and "resume=auto" in res.stderr
    assert overrides.read_text() == "- model.train_steps=5\n"
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == "old"
    assert not (tmp_path / "sweep" / "1").exists()


def test_continuing_in_own_dir_is_not_refused(tmp_path, monkeypatch, capsys):
    import pytest
    from omegaconf import OmegaConf

    from neuralsde.hydra_callbacks import RefuseUsedRunDir

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)  # a requeued job may continue its own run anyway
    run = tmp_path / "run"
    used_run(run)
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(run)}, "sweep": {"dir": str(tmp_path)}},
                            "resume": None, "ckpt_path": str(run / "checkpoints" / "last.ckpt")})
    RefuseUsedRunDir().on_run_start(cfg)  # continuing that run from its own checkpoint
    cfg.ckpt_path, cfg.resume = None, "auto"
    RefuseUsedRunDir().on_multirun_start(cfg)  # a sweep rerun to continue its jobs
    # the same directories given to a new run or sweep are refused: what was let through above is the continuing
    cfg.resume = None
    refusals = ((RefuseUsedRunDir().on_run_start, f"run directory {str(run)!r} already holds a run with checkpoints"),
                (RefuseUsedRunDir().on_multirun_start, f"hydra.sweep.dir={str(tmp_path)!r} already holds 1 job(s)"))
    for start, said in refusals:
        with pytest.raises(SystemExit) as stop:
            start(cfg)
        assert stop.value.code == 2 and said in capsys.readouterr().err
