#!/usr/bin/env bash
# Runs benchmarks/bench_robustness_square.py in the benchmark's own environment: the project, torch (CPU build,
# to train the benchmark's CNN) and the Adversarial Robustness Toolbox, which is not a project dependency.
# Usage: benchmarks/run_bench_robustness.sh [--quick] [--iters K] [--n N] [--device auto|cpu|cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-benchmarks/.venv-art}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import art, torch, auditor" 2>/dev/null; then
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch pinned: an unpinned torch pulls the CUDA build (gigabytes); 2.13.0 resolves to a CPU build here.
  "$VENV/bin/python" -m pip install -q -e . "torch==2.13.0" "adversarial-robustness-toolbox==1.20.1" scikit-learn
fi
exec "$VENV/bin/python" benchmarks/bench_robustness_square.py "$@"
