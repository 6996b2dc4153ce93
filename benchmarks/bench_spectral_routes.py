"""Benchmark: ``auditor_sparsity.spectral.singular_values`` (the routes ``sparsity.conditioning`` takes for large
layers) against the plain ``numpy.linalg.svd(W, compute_uv=False)`` in float64, on the same matrices, in one run.

Matrices of the shapes that made the corpus's big models slow (docs/real-exports.md): VGG-19 / AlexNet / ZFNet
``fc6`` and ``fc7`` weights, random (full rank: the Gram route) and constant-filled like the onnx-caffe2
``light_*`` files (rank one: the certified low-rank route), and an ill-conditioned float32 one. Per matrix: both
times, their ratio, the largest deviation from the SVD's values (absolute, and relative above the
numerical-rank tolerance) next to the bounds the route states::

    python benchmarks/bench_spectral_routes.py [--scale 0.5] [--threads 1]

``--scale`` shrinks every side (the plain SVD of 4096 x 25088 takes minutes on one core). Measured on the
2-core VM shared with six other busy sessions (load ~10), 1 BLAS thread, ``--scale 0.5``, one run::

    matrix                             route      ours s    svd s  ratio  |dev| / bound        rel dev / bound
    vgg19 fc6 random 2048x12544        gram        39.83   145.05  0.275  1.0e-14 / 2.7e-09   1.5e-14 / 4.0e-09
    vgg19 fc6 constant 0.02 2048x12544 lowrank      6.61   178.21  0.037  1.0e-12 / 2.7e-08   6.2e-15 / 2.7e-10
    alexnet fc6 random 2048x4608       gram        27.50    85.42  0.322  1.2e-14 / 1.1e-09   3.1e-14 / 4.6e-09
    fc7 random 2048x2048               gram        22.54    54.20  0.416  2.2e-12 / 1.4e-06   1.2e-10 / 8.3e-05
    ill-conditioned (1e4) 1024x1024    gram         2.31     4.64  0.498  2.7e-13 / 3.2e-08   1.8e-09 / 2.1e-04
    total: ours 98.8 s, numpy.linalg.svd 467.5 s, ratio 0.211

(measured before the stable-rank pre-test, which now skips the low-rank attempt on the random matrices; every
rank equal to the SVD's; the random square matrix has two values below the float32 tolerance, the
ill-conditioned one 23.) Before this route existed, the rank-one layer took the SVD after the Gram route
(ratio > 1). Timings on a loaded machine are noisy; the ratios are what the run compares."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def matrices(scale: float) -> list[tuple[str, np.ndarray]]:
    """``(name, float32 matrix)`` in the layer layout (out x in)."""
    r = np.random.default_rng(0)

    def sz(k: int) -> int:
        return max(8, int(k * scale))

    out = []
    a, b = sz(4096), sz(25088)
    out.append((f"vgg19 fc6 random {a}x{b}", (r.standard_normal((a, b), dtype=np.float32) * 0.01)))
    out.append((f"vgg19 fc6 constant 0.02 {a}x{b}", np.full((a, b), 0.02, np.float32)))
    c = sz(9216)
    out.append((f"alexnet fc6 random {a}x{c}", (r.standard_normal((a, c), dtype=np.float32) * 0.01)))
    out.append((f"fc7 random {a}x{a}", (r.standard_normal((a, a), dtype=np.float32) * 0.01)))
    d = sz(2048)
    u, _ = np.linalg.qr(r.standard_normal((d, d)))
    v, _ = np.linalg.qr(r.standard_normal((d, d)))
    out.append((f"ill-conditioned (1e4) {d}x{d}", ((u * np.geomspace(1.0, 1e-4, d)) @ v.T).astype(np.float32)))
    return out


def measure(scale: float) -> list[dict[str, object]]:
    from auditor_sparsity.spectral import singular_values

    rows: list[dict[str, object]] = []
    for name, w in matrices(scale):
        t0 = time.perf_counter()
        spec = singular_values(w[None], eps=EPS32)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        t_svd = time.perf_counter() - t0
        k = min(exact.size, spec.values.size)
        dev = np.abs(spec.values[:k] - exact[:k])
        above = exact > spec.tolerance
        rel = float((dev[above] / exact[above]).max()) if above.any() else 0.0
        rows.append({"matrix": name, "method": spec.method, "ours_s": t_ours, "svd_s": t_svd,
                     "ratio": t_ours / t_svd, "max_abs_dev": float(dev.max()), "abs_bound": spec.abs_error_bound,
                     "max_rel_dev": rel, "rel_bound": spec.rel_error_bound, "rank": spec.rank,
                     "svd_rank": int(above.sum())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (1: steady timings on a shared machine)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.scale)))
        return
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, __file__, "--child", "--scale", str(args.scale)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.threads} BLAS thread(s), scale {args.scale}")
    print(f"{'matrix':<34} {'route':<8} {'ours s':>8} {'svd s':>8} {'ratio':>6}  {'|dev| / bound':<20} "
          f"{'rel dev / bound':<20} rank")
    for r in rows:
        ok = r["max_abs_dev"] <= r["abs_bound"] and r["max_rel_dev"] <= max(r["rel_bound"], 0.0) + 0.0
        print(f"{r['matrix']:<34} {r['method']:<8} {r['ours_s']:>8.2f} {r['svd_s']:>8.2f} {r['ratio']:>6.3f}  "
              f"{r['max_abs_dev']:.1e} / {r['abs_bound']:.1e}   {r['max_rel_dev']:.1e} / {r['rel_bound']:.1e}  "
              f"{r['rank']} (svd {r['svd_rank']}){'' if ok else '  BOUND VIOLATED'}")
    total_ours = sum(float(r["ours_s"]) for r in rows)
    total_svd = sum(float(r["svd_s"]) for r in rows)
    print(f"total: ours {total_ours:.1f} s, numpy.linalg.svd {total_svd:.1f} s, ratio {total_ours / total_svd:.3f}")


if __name__ == "__main__":
    main()
