"""Benchmark of the ``transfer`` plugin against straightforward baselines, measured in one run.

    python benchmarks/bench_transfer.py

1. CKA layer matrix: the plugin's accumulator (one centred Gram per layer, every layer pair from one matrix
   product) against the textbook per-pair ``tr(KHLH)`` with an explicit centring matrix H.
2. Feature gathering: every layer added as a graph output at once (one pass) against one pass per layer.
3. Occlusion maps: all patches of a chunk of samples in one batched run against one model call per sample,
   and against one call per sample and patch (run on 16 rows, scaled to 64).
4. LogME: one SVD and all classes iterated together against the published formula with a D × D solve per
   class and per fixed-point iteration.

Each line prints the baseline time, the plugin's time, their ratio, and the largest difference of results.
Figures measured on the development machine (2 CPU cores shared with other jobs, so ±30 %; onnxruntime CPU
provider; a tiny 3-layer CNN, so per-call overhead is small and the gathering/occlusion ratios are lower
bounds), this script's output:

    cka matrix   n=400, 4x4 layers      baseline 6.71 s  plugin 0.164 s  x40.9   max |diff| 3.7e-15
    gathering    6 layers, 4000 rows    baseline 0.56 s  plugin 0.193 s  x2.9   max |diff| 0
    occlusion    64 rows, per sample    baseline 0.0731 s  plugin 0.0727 s  x1.01   max |diff| 0
    occlusion    per sample and patch   baseline 0.658 s  plugin 0.0727 s  x9.06   max |diff| 0
    logme        n=2000, D=256, K=10    baseline 7.75 s  plugin 0.171 s  x45.2   max |diff| 1.7e-16

(Occluding one sample's patches per call is already batched enough for so small a model: the gain there is
from not calling the model once per patch.)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugins"))

from auditor_transfer.attribution import Scorer, occlusion_maps
from auditor_transfer.stats import CKAAccumulator, logme
from transfer_helpers import write_conv_stack

from auditor.model import ModelConfig, ModelHandle


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def line(name: str, what: str, base: float, mine: float, diff: float) -> None:
    print(f"{name:<12} {what:<22} baseline {base:.3g} s  plugin {mine:.3g} s  x{base / mine:.3g}   "
          f"max |diff| {diff:.2g}")


def bench_cka() -> None:
    rng = np.random.default_rng(0)
    n = 400
    a = [rng.normal(size=(n, 256)) for _ in range(4)]
    b = [x[:, :128] @ rng.normal(size=(128, 200)) + rng.normal(size=(n, 200)) for x in a]

    def naive() -> np.ndarray:
        h = np.eye(n) - np.ones((n, n)) / n

        def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
            return float(np.trace(k @ h @ l @ h))

        out = np.zeros((4, 4))
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                k, l = x @ x.T, y @ y.T  # noqa: E741
                out[i, j] = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
        return out

    def plugin() -> np.ndarray:
        acc = CKAAccumulator(4, 4, unbiased=False)
        acc.add(a, b)
        return acc.result()

    tb, rb = timed(naive)
    tp, rp = timed(plugin, 3)
    line("cka matrix", "n=400, 4x4 layers", tb, tp, float(np.max(np.abs(rb - rp))))


def bench_gathering(model: ModelHandle, x: np.ndarray) -> None:
    layers = ["c0", "r0", "c1", "r1", "c2", "r2"]
    model.run(x[:8], layers)  # sessions built outside the timing
    for name in layers:
        model.run(x[:8], [name])
    tb, rb = timed(lambda: {name: model.run(x, [name])[name] for name in layers}, 2)
    tp, rp = timed(lambda: model.run(x, layers), 2)
    line("gathering", f"6 layers, {len(x)} rows", tb, tp, max(float(np.max(np.abs(rb[k] - rp[k]))) for k in layers))


def bench_occlusion(model: ModelHandle, x: np.ndarray) -> None:
    x = x[:64]
    scorer = Scorer(model, "logit", "classification")
    targets = scorer(x).argmax(1)
    base = np.zeros(x.shape[1:])

    def per_sample() -> np.ndarray:
        rows = []
        for i in range(len(x)):
            rows.append(occlusion_maps(scorer, x[i:i + 1], targets[i:i + 1], patch=1, baseline=base))
        return np.concatenate(rows)

    def per_input() -> np.ndarray:
        # the naive loop: one model call per sample and per occluded patch
        xs = x[:16]
        out = np.empty((len(xs), 64))
        for i in range(len(xs)):
            for p in range(64):
                xo = xs[i:i + 1].copy()
                xo[0, :, p // 8, p % 8] = 0
                out[i, p] = scorer(xs[i:i + 1])[0, targets[i]] - scorer(xo)[0, targets[i]]
        return out

    tb, rb = timed(per_sample, 2)
    tp, rp = timed(lambda: occlusion_maps(scorer, x, targets, patch=1, baseline=base), 2)
    line("occlusion", f"{len(x)} rows, per sample", tb, tp, float(np.max(np.abs(rb - rp))))
    tn, rn = timed(per_input)
    # the naive loop ran 16 of the 64 rows: compare per row
    line("occlusion", "per sample and patch", tn * len(x) / 16, tp, float(np.max(np.abs(rn - rp[:16]))))


def bench_logme() -> None:
    rng = np.random.default_rng(1)
    n, d, k = 2000, 256, 10
    y = rng.integers(0, k, n)
    f = rng.normal(size=(n, d)) + 0.3 * np.eye(k, d)[y]

    def direct() -> float:
        vals = []
        ftf = f.T @ f
        eig = np.linalg.eigvalsh(ftf)  # once: the baseline is only slow where the formula itself is
        for c in range(k):
            t = (y == c).astype(float)
            alpha, beta = 1.0, 1.0
            for _ in range(100):
                big_a = alpha * np.eye(d) + beta * ftf
                m = beta * np.linalg.solve(big_a, f.T @ t)
                gamma = float(np.sum(beta * eig / (alpha + beta * eig)))
                new_alpha = gamma / float(m @ m)
                new_beta = (n - gamma) / float(np.sum((f @ m - t) ** 2))
                done = abs(np.log(new_alpha / alpha)) < 1e-7 and abs(np.log(new_beta / beta)) < 1e-7
                alpha, beta = new_alpha, new_beta
                if done:
                    break
            big_a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(big_a, f.T @ t)
            ev = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                  - beta / 2 * np.sum((f @ m - t) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(big_a)[1] / 2)
            vals.append(ev / n)
        return float(np.mean(vals))

    tb, rb = timed(direct)
    tp, rp = timed(lambda: logme(f, y), 3)
    line("logme", f"n={n}, D={d}, K={k}", tb, tp, abs(rb - rp))


def main() -> None:
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_conv_stack(Path(tmp) / "m.onnx", [rng.normal(size=(16, 1, 3, 3)), rng.normal(size=(16, 16, 3, 3)),
                                                     rng.normal(size=(16, 16, 3, 3))])
        model = ModelHandle(ModelConfig(path=path, device="cpu"), batch_size=256)
        x = rng.normal(size=(4000, 1, 8, 8)).astype(np.float32)
        bench_cka()
        bench_gathering(model, x)
        bench_occlusion(model, x)
        bench_logme()


if __name__ == "__main__":
    main()
