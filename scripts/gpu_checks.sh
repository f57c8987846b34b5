#!/usr/bin/env bash
# Every GPU check in one go, for a session on a machine with a CUDA device: the GPU tests (pytest -m gpu: the
# backends on CUDA, Lightning on the GPU, model.cuda_graph), then the benchmark suite on CUDA (bench_gpu.sh, its
# arguments passed on, e.g. --rows 8,1). Without a GPU it says so and exits 0. Exit status: the tests' failing
# one wins over the benchmark's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_checks: no CUDA device visible; nothing to check here."
    exit 0
fi
export WANDB_MODE="${WANDB_MODE:-offline}"
timeout "${GPU_TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
tests=$?
PY="$PY" bash scripts/bench_gpu.sh "$@"
bench=$?
echo "gpu_checks: tests exit $tests, benchmarks exit $bench"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
