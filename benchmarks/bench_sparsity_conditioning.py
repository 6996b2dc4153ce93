"""Benchmark: ``sparsity.conditioning`` against weightwatcher's ``analyze()`` on the same 85M-parameter ONNX file.

The model has 12 blocks of four 768×768 and two 768×3072 / 3072×768 linear layers (MatMul), 84.9M parameters in
72 matrices, the shape of BERT-base's encoder weights. Both tools read the same ``.onnx`` file; the ratio is
measured in one run. weightwatcher is *not* a project dependency: install it in a separate venv and point
``--ww-python`` at it::

    python3 -m venv /tmp/bench-sparsity && /tmp/bench-sparsity/bin/pip install weightwatcher onnx
    python benchmarks/bench_sparsity_conditioning.py --ww-python /tmp/bench-sparsity/bin/python

It also states the precision of the fast (Gram) route: on a few matrices the reported singular values are
compared with LAPACK's exact SVD.

Measured (2-core shared VM, numpy 2 / OpenBLAS, 1 BLAS thread for both, weightwatcher 0.7.7, one run)::

    sparsity.conditioning: 4.26 s (72 matrices, method gram, svd)
    precision vs exact SVD: spectral_norm 3.8e-15, sigma_min 2.0e-09, effective_rank 1.6e-14;
        stated a-priori bound 3.5e-04
    weightwatcher analyze(): 88.19 s (72 layers)
    ratio sparsity.conditioning / weightwatcher = 0.048 (target <= 0.2)

With the default 2 BLAS threads on the same (busy) machine the figures were 76 s and 286 s (ratio 0.27):
OpenBLAS's spinning threads degrade badly when the cores are shared, which is why both run single-threaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from auditor_sparsity.conditioning import Conditioning, matrix_stack
from auditor_sparsity.spectral import effective_rank
from auditor_sparsity.weights import find_layer_weights, layer_values
from onnx import TensorProto, helper, numpy_helper

from auditor.context import AuditContext
from auditor.model import ModelConfig, ModelHandle

WW_SCRIPT = """
import sys, time, json
t0 = time.perf_counter()
import onnx, weightwatcher as ww
model = onnx.load(sys.argv[1])
details = ww.WeightWatcher(model=model).analyze()
print(json.dumps({"seconds": time.perf_counter() - t0, "layers": int(len(details))}))
"""


def build(path: Path, blocks: int = 12, d: int = 768, ff: int = 3072) -> int:
    """A MatMul chain with BERT-base-sized weights; returns the parameter count."""
    r = np.random.default_rng(0)
    nodes, inits = [], []
    cur = "x"
    n_params = 0
    shapes = [(d, d)] * 4 + [(d, ff), (ff, d)]
    for b in range(blocks):
        for i, (k, n) in enumerate(shapes):
            name = f"b{b}_w{i}"
            w = (r.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float32)
            inits.append(numpy_helper.from_array(w, name))
            out = f"{name}_out"
            nodes.append(helper.make_node("MatMul", [cur, name], [out], name=f"b{b}_mm{i}"))
            cur = out
            n_params += w.size
    g = helper.make_graph(nodes, "bert_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                          [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", d])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return n_params


def run_ours(path: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    handle = ModelHandle(ModelConfig(path=path))
    ctx = AuditContext(check_id="c", params=Conditioning.defaults(), model=handle, data=None, seed=0,
                       rng=np.random.default_rng(0))
    res = Conditioning().run(ctx)
    return time.perf_counter() - t0, res.metrics


def precision(path: Path, metrics: dict) -> dict[str, float]:
    """Largest relative deviation from LAPACK's SVD over one matrix of each shape."""
    handle = ModelHandle(ModelConfig(path=path))
    worst = {"spectral_norm": 0.0, "sigma_min": 0.0, "effective_rank": 0.0, "bound": 0.0}
    for lw in find_layer_weights(handle)[:6]:
        s = np.linalg.svd(matrix_stack(lw, layer_values(handle, lw)).astype(np.float64)[0], compute_uv=False)
        e = metrics["layers"][lw.name]
        worst["spectral_norm"] = max(worst["spectral_norm"], abs(e["spectral_norm"] - s[0]) / s[0])
        worst["sigma_min"] = max(worst["sigma_min"], abs(e["sigma_min"] - s[-1]) / s[-1])
        er = effective_rank(s)
        worst["effective_rank"] = max(worst["effective_rank"], abs(e["effective_rank"] - er) / er)
        worst["bound"] = max(worst["bound"], e["rel_error_bound"])
    return worst


def _child(args: list[str], threads: int) -> dict:
    """Run a measurement in a fresh process with ``threads`` BLAS threads (the same for both tools)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        print(f"{args[0]} failed:", out.stderr[-2000:], file=sys.stderr)
        sys.exit(1)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ww-python", default="/tmp/bench-sparsity/bin/python",
                    help="a python with weightwatcher installed (kept out of the project's dependencies)")
    ap.add_argument("--dir", default=None, help="where to write the model (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads for both tools (1 by default: on a shared machine OpenBLAS's spinning "
                         "threads make timings erratic)")
    ap.add_argument("--ours", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours:  # child: time the check in this fresh process
        seconds, metrics = run_ours(Path(args.ours))
        prec = precision(Path(args.ours), metrics)
        methods = sorted({e["method"] for e in metrics["layers"].values()})
        print(json.dumps({"seconds": seconds, "matrices": metrics["matrices"], "methods": methods,
                          "precision": prec}))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bert_like.onnx"
        n = build(path)
        print(f"model: {n / 1e6:.1f}M parameters in 72 matrices, {path.stat().st_size / 2**20:.0f} MiB; "
              f"{args.threads} BLAS thread(s) for both tools")
        ours = _child([sys.executable, __file__, "--ours", str(path)], args.threads)
        print(f"sparsity.conditioning: {ours['seconds']:.2f} s ({ours['matrices']} matrices, "
              f"method {', '.join(ours['methods'])})")
        prec = ours["precision"]
        print("precision vs exact SVD (max relative error over one matrix of each shape): "
              + ", ".join(f"{k} {v:.1e}" for k, v in prec.items() if k != "bound")
              + f"; stated a-priori bound {prec['bound']:.1e}")
        ww = _child([args.ww_python, "-c", WW_SCRIPT, str(path)], args.threads)
        print(f"weightwatcher analyze(): {ww['seconds']:.2f} s ({ww['layers']} layers)")
        print(f"ratio sparsity.conditioning / weightwatcher = {ours['seconds'] / ww['seconds']:.3f} (target <= 0.2)")


if __name__ == "__main__":
    main()
