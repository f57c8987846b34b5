#!/usr/bin/env bash
# The benchmark suite on CUDA (the device CUDA_VISIBLE_DEVICES exposes), in under 10 minutes: --quick sizes,
# writing bench/results_gpu.md and bench/results_gpu.json with the GPU name recorded.
# Without a GPU it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench_gpu: no CUDA device visible (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES:-}'); GPU rows skipped."
    exit 0
fi
"$PY" -c "import torch; print('bench_gpu: device', torch.cuda.get_device_name(0))"
# Kernels, syncs and dispatches per training step, RH vs midpoint (counts; 16 s on the CPU; not yet run on a GPU).
timeout 120 "$PY" scripts/profile_launches.py --device cuda || echo "bench_gpu: dispatch census failed (exit $?)"
# Row 5 measures torch.cuda.max_memory_allocated in one subprocess per setting; rows 6-7 use the GPU trainer;
# row 8 compares both backends, reversible Heun against midpoint, and solver.compile=default against eager.
exec timeout 590 "$PY" scripts/bench.py --device cuda --quick --out bench/results_gpu "$@"
