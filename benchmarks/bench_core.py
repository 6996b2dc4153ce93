"""Core evaluation throughput against raw ONNX Runtime, measured in one run.

Baseline: ``InferenceSession.run`` called directly over pre-cast float32 chunks at the best batch size found
in a sweep. Candidate: the auditor's ``ModelHandle.run`` (batching, dtype casting, output concatenation) at
that batch size. The bar (issue #2) is a ratio of at least 0.9. A second case measures a model exported with a
fixed batch of 1: raw ONNX Runtime can only loop over samples; the auditor makes the batch symbolic after
verifying it on real samples.

Run: ``python benchmarks/bench_core.py [--n 20000] [--repeats 5]``. No timing assertions live in the tests.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from auditor.model import ModelConfig, ModelHandle


def build_mlp(path: Path, sizes: list[int], batch: int | str = "N") -> None:
    """A ReLU MLP with the given layer sizes and a softmax head."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits += [numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"z{i}"]))
        prev = f"z{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["p"], axis=1))
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sizes[0]])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [batch, sizes[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Fastest wall time of ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Run both cases and print throughputs and ratios."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    sizes = [256, 512, 512, 10]
    build_mlp(tmp / "dyn.onnx", sizes)
    x64 = np.random.default_rng(1).normal(size=(args.n, sizes[0]))  # float64, as data often arrives
    x32 = x64.astype(np.float32)

    sess = ort.InferenceSession(str(tmp / "dyn.onnx"), providers=["CPUExecutionProvider"])

    def raw(bs: int) -> None:
        for s in range(0, args.n, bs):
            sess.run(["p"], {"x": x32[s:s + bs]})

    sweep = {bs: best_of(lambda bs=bs: raw(bs), args.repeats) for bs in (64, 256, 1024, 4096)}
    best_bs = min(sweep, key=sweep.__getitem__)
    t_raw = sweep[best_bs]
    handle = ModelHandle(ModelConfig(path=tmp / "dyn.onnx", device="cpu"), batch_size=best_bs)
    t_aud = best_of(lambda: handle.run(x64), args.repeats)
    print(f"dynamic-batch MLP {sizes}, n={args.n}, CPU provider")
    for bs, t in sweep.items():
        print(f"  raw InferenceSession.run  bs={bs:5d}: {args.n / t:10.0f} samples/s")
    print(f"  auditor ModelHandle.run   bs={best_bs:5d}: {args.n / t_aud:10.0f} samples/s "
          "(float64 data cast per batch)")
    print(f"  ratio auditor/raw-best: {t_raw / t_aud:.3f}  (bar: >= 0.9)")

    build_mlp(tmp / "fixed1.onnx", sizes, batch=1)
    n1 = min(args.n, 5000)
    sess1 = ort.InferenceSession(str(tmp / "fixed1.onnx"), providers=["CPUExecutionProvider"])

    def raw1() -> None:
        for s in range(n1):
            sess1.run(["p"], {"x": x32[s:s + 1]})

    t_raw1 = best_of(raw1, max(1, args.repeats // 2))
    h1 = ModelHandle(ModelConfig(path=tmp / "fixed1.onnx", device="cpu"), batch_size=best_bs)
    t_aud1 = best_of(lambda: h1.run(x32[:n1]), max(1, args.repeats // 2))
    print(f"fixed batch-1 export, n={n1}: raw per-sample loop {n1 / t_raw1:.0f} samples/s, auditor "
          f"({h1.info()['batching']}) {n1 / t_aud1:.0f} samples/s, speed-up {t_raw1 / t_aud1:.1f}x")


if __name__ == "__main__":
    main()
