#!/usr/bin/env bash
# Every GPU check in one go, for a session on a machine with a CUDA device: the GPU tests (pytest -m gpu: the
# backends on CUDA, Lightning on the GPU, model.cuda_graph), then the benchmark suite on CUDA (bench_gpu.sh, its
# arguments passed on, e.g. --rows 8,1). Without a GPU the tests skip and bench_gpu.sh says so. Exit status: the
# tests' failing one wins over the benchmarks'.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export WANDB_MODE="${WANDB_MODE:-offline}"
timeout "${GPU_TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
tests=$?
PY="$PY" bash scripts/bench_gpu.sh "$@"
bench=$?
echo "gpu_checks: tests exit $tests, benchmarks exit $bench"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
