"""Benchmark invariants (fast tier, not timed): evaluation counts, reversible-adjoint exactness, driver smoke."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_accuracy import gradient_errors  # noqa: E402
from bench_solvers import generator_nfe  # noqa: E402

from neuralsde.solver import SolverConfig  # noqa: E402
from sdegan.components.generator import Generator  # noqa: E402


@pytest.mark.parametrize("method,per_step", [("reversible_heun", 1.0), ("midpoint", 2.0)])
@pytest.mark.parametrize("adjoint", [True, False])
def test_function_evaluations_per_step(method, per_step, adjoint):
    # Marginal count between a 4- and a 8-step solve: per-solve calls (reversible Heun's initial evaluation,
    # torchsde's shape check) cancel. Separate f/g calls must be zero, else GeneratorSDE.nfe undercounts.
    torch.manual_seed(0)
    gen = Generator(1, t_size=9, solver=SolverConfig(method=method, adjoint=adjoint))
    n = generator_nfe(gen, batch=4, lengths=(5, 9))
    assert n["per_step"] == per_step
    assert n["per_step_separate_f"] == 0 and n["per_step_separate_g"] == 0
    if method == "reversible_heun":
        assert n["fixed_per_solve"]["f_and_g"] == 2  # the initial evaluation + torchsde's shape check


def test_reversible_heun_adjoint_is_exact_in_float64():
    res = gradient_errors(8, methods=("reversible_heun",), dtypes=(torch.float64,), batch=4, fine=None)
    assert res[("reversible_heun", torch.float64)]["adjoint_vs_direct"] < 1e-10


def test_bench_driver_writes_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--rows", "2",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    keys = {"cpu", "cores", "torch_threads", "torch", "torchsde", "torchcde", "lightning", "date"}
    assert keys <= set(data["machine"])
    (row,) = data["rows"]
    assert row["row"] == 2 and not row.get("error") and row["entries"]
    assert all({"what", "result"} <= set(e) for e in row["entries"])
    assert out.with_suffix(".md").exists()
    # another row later: the first is kept with the date it was measured (a partial run replaced the whole file)
    first = data["machine"]["date"]
    data["machine"]["date"] = "2026-01-01T00:00:00"  # as if measured earlier
    out.with_suffix(".json").write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--rows", "4",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(out.with_suffix(".json").read_text())
    assert [r["row"] for r in again["rows"]] == [2, 4] and again["rows"][0]["entries"] == row["entries"]
    assert again["rows"][0]["measured"] == first and again["rows"][1]["measured"] == again["machine"]["date"]
    assert f"Measured {first}, in an earlier run" in out.with_suffix(".md").read_text()


def test_dispatch_census_no_host_reads_per_step_and_half_of_midpoints_dispatches():
    # What a launch-bound GPU pays for: kernels per solver step, and host reads (each one a device sync).
    from profile_launches import split

    res = {m: split(m, (9, 17), torch.device("cpu"), batch=16, foreach=True) for m in ("reversible_heun", "midpoint")}
    rh, mid = res["reversible_heun"], res["midpoint"]
    assert rh["host_reads"][0] == 0 and mid["host_reads"][0] == 0  # no sync inside the solver loops
    # per training step: the loss check only (the solves read nothing: model.cuda_graph; the step counter is
    # kept on the host: GenerativeModule.steps_taken)
    assert rh["host_reads"][1] <= 1 and mid["host_reads"][1] <= 1
    assert 1.85 <= mid["dispatches"][0] / rh["dispatches"][0] <= 2.0  # the fused steps: about half of midpoint's
    # shared set-up: midpoint's is no heavier (it is lighter since its CDE solve reads the path's slopes once)
    assert mid["dispatches"][1] <= rh["dispatches"][1]


def test_outside_the_solver_row_compares_equal_results(tmp_path):
    # row 11 times each change against the code it replaced, asserting first that both give the same numbers
    from _bench_utils import Ctx
    from bench_outside import run

    rows = run(Ctx(device=torch.device("cpu"), quick=True, tmp=tmp_path, smoke=True))
    assert len(rows) == 3 and all(r["result"].endswith(")") and r["paper"] == "same values" for r in rows)
