#!/usr/bin/env bash
# The GPU path, checked in one prepared run of at most five minutes on a machine with CUDA.
#
# Reports which execution providers load (ONNX Runtime's own list, and what the auditor's quiet probe really gets),
# then runs torch.parity, torch.pgd and a short torch.retrain (and Square Attack through ONNX Runtime) on a small
# CNN with model.device: cuda and again with model.device: cpu, and prints each check's wall time and the ratio
# cpu / cuda. On a machine without CUDA it says so and exits 0 without measuring anything.
#
#   benchmarks/gpu_check.sh                  # from the repository root
#   WHEELS=/path/to/wheels benchmarks/gpu_check.sh   # no registry: install missing pure-Python deps from a folder
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh      # no GPU: run only the CPU leg (tests the script itself)
#
# Figures are printed and written to benchmarks/results/gpu_check.json. Exit 0: measured (or no CUDA);
# 3: the auditor's own dependencies are missing and could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || echo "nvidia-smi: not found"

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["numpy", "onnx", "onnxruntime", "pluggy", "click", "yaml", "jsonschema", "rich", "torch"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ] && [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" $(echo "$missing" | sed 's/yaml/pyyaml/') || true
  missing=$("$PY" -c "import importlib.util as u; print(' '.join(n for n in '$missing'.split() if u.find_spec(n) is None))")
fi
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (pip install -e '.[torch]', or WHEELS=folder)" >&2
  exit 3
fi

exec timeout 290 "$PY" - <<'EOF'
import json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, "benchmarks")
from bench_ray import write_cnn  # the same small CNN as the Ray benchmark

from auditor.device import choose_providers

print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, torch sees CUDA: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"  device 0: {torch.cuda.get_device_name(0)}")
print(f"onnxruntime {ort.__version__}, listed providers: {ort.get_available_providers()}")
providers, note = choose_providers("auto")
print(f"auditor probe (model.device: auto): {providers[0]} ({note})")
ort_cuda = providers[0] == "CUDAExecutionProvider"
dry = os.environ.get("GPU_CHECK_DRY_RUN") == "1"  # measure the CPU leg only: tests this script without a GPU
if not ort_cuda and not torch.cuda.is_available() and not dry:
    print("gpu_check: no CUDA on this machine (neither ONNX Runtime's CUDA provider nor torch loads it): "
          "nothing to compare")
    sys.exit(0)

import auditor_performance, auditor_robustness, auditor_torch
from auditor.testing import run_audit

work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
model = write_cnn(work / "cnn.onnx", 3, 32, 10)
r = np.random.default_rng(0)
x = r.random((1024, 3, 32, 32), dtype=np.float32)
sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
y = np.concatenate([sess.run(None, {"x": x[i:i + 256]})[0].argmax(1) for i in range(0, len(x), 256)])
np.savez(work / "data.npz", x=x, y=y)
checks = [
    {"use": "torch.parity", "with": {"limit": 1024}},
    {"use": "torch.pgd", "with": {"limit": 512, "steps": 10, "eps": 0.01}},
    {"use": "torch.retrain", "with": {"rules": ["backprop"], "epochs": 1, "limit": 1024, "batch_size": 128}},
    {"use": "robustness.square_attack", "with": {"limit": 512, "max_queries": 30, "eps": 0.01}},
]
times, out = {}, {}
for device in (("cpu",) if dry else ("cuda", "cpu")):
    doc = {"model": {"path": str(model), "device": device}, "data": {"path": str(work / "data.npz")},
           "train_data": {"path": str(work / "data.npz")}, "seed": 0, "checks": checks,
           "report": {"dir": str(work / device)}}
    print(f"{device}: running {len(checks)} checks ...", flush=True)
    t0 = time.perf_counter()
    res = run_audit(doc, workdir=work, plugins=[auditor_performance, auditor_robustness, auditor_torch],
                    entry_points=False)
    wall = time.perf_counter() - t0
    if res.report is None:
        print(f"{device}: the audit did not run: {res.error}")
        continue
    d = res.doc
    times[device] = {c["id"]: c["duration_s"] for c in d["checks"]}
    out[device] = {"provider": d["model"]["provider"], "wall_s": wall,
                   "status": {c["id"]: c["status"] for c in d["checks"]},
                   "errors": {c["id"]: c.get("error") or c.get("skip_reason") for c in d["checks"]
                              if c["status"] in ("error", "skipped")},
                   "parity_max_abs": d["checks"][0]["metrics"].get("max_abs_diff")}
    print(f"{device}: ORT provider {out[device]['provider']}, audit {wall:.1f} s, statuses {out[device]['status']}")
    for k, v in out[device]["errors"].items():
        print(f"  {k}: {v}")
print(f"{'check':<28}{'cuda s':>10}{'cpu s':>10}{'cpu/cuda':>10}")
ratios = {}
for cid in times.get("cpu", {}):
    g, c = times.get("cuda", {}).get(cid), times["cpu"][cid]
    ratios[cid] = (c / g) if g else None
    print(f"{cid:<28}{g if g is not None else float('nan'):>10.2f}{c:>10.2f}"
          f"{ratios[cid] if ratios[cid] else float('nan'):>10.2f}")
result = {"torch": torch.__version__, "onnxruntime": ort.__version__, "ort_cuda_loads": ort_cuda,
          "torch_cuda": torch.cuda.is_available(), "probe": note, "runs": out, "times_s": times, "ratio_cpu_over_cuda": ratios}
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
EOF
