"""Benchmark: ``robustness.square_attack`` against the Adversarial Robustness Toolbox's ``SquareAttack``.

Same model (a small CNN trained here on scikit-learn's digits, upscaled to 1×28×28, written to ONNX), the same
ONNX Runtime session (ART gets it as a black-box classifier, ``BlackBoxClassifierNeuralNetwork``), the same
samples (the correctly classified test images), the same ε and the same iteration budget: ART's ``max_iter = K``
iterations after its stripe initialisation; ours ``max_queries = K + 1`` (one query for the stripe
initialisation, one per iteration), i.e. the same number of candidate perturbations per sample.

Ours reads the same probabilities as ART here (the check itself prefers the logits entering the final Softmax
when the graph has them). Both run with the same ``p_init``: 0.8 (ART's default, and ours) and the reference
code's ImageNet value (0.05 for L∞, 0.1 for L2). Both attacks' outputs are checked the same way: inside the
ε-ball (float64, with a 1e-6 allowance for ART's float32 arithmetic) and the [0, 1] range, and misclassified by a
freshly opened session. Pass criteria (issue 3): our success rate ≥ ART's, our wall time ≤ half of ART's,
measured in this one run (ART and ours alternate ``--repeats`` times on the shared session; the fastest of each
is compared, so a busy machine slows both alike). The full check (``run_audit`` with the same samples, its
verification included) is timed as well.

ART is not a dependency of the project: run this in the benchmark's own environment::

    benchmarks/run_bench_robustness.sh            # builds benchmarks/.venv-art (project, torch CPU, ART), runs this
    benchmarks/run_bench_robustness.sh --quick    # smaller budget, for a smoke test

Figures are printed and written to ``benchmarks/results/robustness_square.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def train_cnn(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """A 2-conv CNN on digits at 28×28; returns its weights, the test images (N,1,28,28) and labels, accuracy."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=d.target)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xtr, ytr = x[idx_tr], y[idx_tr]
    g = torch.Generator().manual_seed(seed)
    for _ in range(12):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(xtr[b]), ytr[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[idx_te]).argmax(1) == y[idx_te]).float().mean())
    w = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return w, x[idx_te].numpy(), y[idx_te].numpy(), acc


def write_cnn(path: Path, w: dict[str, np.ndarray]) -> Path:
    """The CNN as ONNX (Conv/Relu/MaxPool/Flatten/Gemm/Softmax, IR 9, opset 17), probabilities out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = {"0.weight": "c1.w", "0.bias": "c1.b", "3.weight": "c2.w", "3.bias": "c2.b", "7.weight": "f1.w",
             "7.bias": "f1.b", "9.weight": "f2.w", "9.bias": "f2.b"}
    inits = [numpy_helper.from_array(w[k].astype(np.float32), v) for k, v in names.items()]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1]), n("Relu", ["c2"], ["r2"]),
        n("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["p2"], ["fl"], axis=1),
        n("Gemm", ["fl", "f1.w", "f1.b"], ["f1"], transB=1), n("Relu", ["f1"], ["r3"]),
        n("Gemm", ["r3", "f2.w", "f2.b"], ["logits"], transB=1), n("Softmax", ["logits"], ["probs"], axis=1),
    ]
    g = helper.make_graph(nodes, "digits-cnn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench")
    m.ir_version = 9
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def check_examples(path: Path, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, eps: float, norm: str,
                   tol: float) -> np.ndarray:
    """Which adversarial examples are inside the ε-ball (+ tol) and [0, 1] and misclassified by a fresh session."""
    import onnxruntime as ort

    d = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d**2).sum(1))
    inside = (size <= eps + tol) & np.all((x_adv >= 0) & (x_adv <= 1), axis=(1, 2, 3))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"x": x_adv[i:i + 256].astype(np.float32)})[0].argmax(1)
                           for i in range(0, len(x_adv), 256)])
    return inside & (pred != y)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, export, attack with both, compare."""
    import onnxruntime as ort
    from art.attacks.evasion import SquareAttack as ArtSquare
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork
    from auditor_robustness._common import Classifier, Geometry
    from auditor_robustness.square import P_INIT, square_attack

    from auditor.model import ModelConfig, ModelHandle
    from auditor.testing import run_audit

    # p_init of the reference implementation's ImageNet runs, compared as well as the default (0.8, as ART's)
    PAPER_P_INIT = {"linf": 0.05, "l2": 0.1}

    tmp = Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    w, x_te, y_te, acc = train_cnn()
    model_path = write_cnn(tmp / "cnn.onnx", w)
    handle = ModelHandle(ModelConfig(path=model_path, device=args.device), batch_size=256)
    out = handle.outputs[0]
    probs = handle.run(x_te)[out]
    keep = probs.argmax(1) == y_te
    x, y = x_te[keep][: args.n], y_te[keep][: args.n]
    geo = Geometry.of(x, handle.layout)
    onehot = np.eye(10, dtype=np.float32)[y]
    results: dict[str, Any] = {
        "model": "CNN 1x28x28 (conv16-pool-conv32-pool-fc64-fc10, softmax), scikit-learn digits upscaled",
        "clean_accuracy": acc, "samples": len(x), "provider": handle.provider, "iterations": args.iters,
        "ours_max_queries": args.iters + 1, "python": platform.python_version(),
        "onnxruntime": ort.__version__, "repeats": args.repeats, "runs": [], "checks": [],
    }
    print(f"model: test accuracy {acc:.4f}; {len(x)} correctly classified samples attacked; {handle.provider}; "
          f"K = {args.iters} iterations")
    data_npz = tmp / "samples.npz"
    np.savez(data_npz, x=x, y=y)

    def predict_fn(b: np.ndarray) -> np.ndarray:  # ART's black box: the very session ours queries
        return handle.run(np.asarray(b, np.float32))[out]

    def art_attack(norm: str, eps: float, p_init: float) -> tuple[np.ndarray, float]:
        np.random.seed(0)
        random.seed(0)
        est = BlackBoxClassifierNeuralNetwork(predict_fn, input_shape=(1, 28, 28), nb_classes=10,
                                              channels_first=True, clip_values=(0.0, 1.0))
        atk = ArtSquare(est, norm=np.inf if norm == "linf" else 2, max_iter=args.iters, eps=eps, p_init=p_init,
                        nb_restarts=1, batch_size=256, verbose=False)
        t0 = time.perf_counter()
        with np.errstate(all="ignore"):  # ART's L2 step divides by zero on some windows
            x_art = atk.generate(x, y=onehot)
        return x_art, time.perf_counter() - t0

    def our_attack(norm: str, eps: float, p_init: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        clf = Classifier(handle, geo, prefer_logits=False)  # the probabilities ART sees, not the logits
        t0 = time.perf_counter()
        res = square_attack(clf.log_probs, geo.canonical(x), y, eps=eps, norm=norm, max_queries=args.iters + 1,
                            p_init=p_init, lo=0.0, hi=1.0, rng=np.random.default_rng(0))
        return geo.to_model(res.x_adv), res.fooled, res.queries, time.perf_counter() - t0

    for norm, eps in (("linf", args.eps_linf), ("l2", args.eps_l2)):
        for p_init in (P_INIT[norm], PAPER_P_INIT[norm]):
            # ART and ours alternate, `repeats` times each, on the shared session: the machine's load falls on
            # both alike; the fastest time of each is compared (success rates are seeded, the same each time)
            art_t, our_t = [], []
            for _ in range(args.repeats):
                x_art, t = art_attack(norm, eps, p_init)
                art_t.append(t)
                x_ours, fooled, queries, t = our_attack(norm, eps, p_init)
                our_t.append(t)
            art_ok = check_examples(model_path, x, x_art, y, eps, norm, tol=1e-6)
            our_ok = check_examples(model_path, x, x_ours, y, eps, norm, tol=0.0) & fooled
            row = {
                "norm": norm, "eps": eps, "p_init": p_init,
                "art": {"success_rate": float(art_ok.mean()), "wall_s": min(art_t), "wall_s_all": art_t},
                "ours": {"success_rate": float(our_ok.mean()), "wall_s": min(our_t), "wall_s_all": our_t,
                         "median_queries": float(np.median(queries[fooled])) if fooled.any() else None,
                         "queries_total": int(queries.sum())},
            }
            row["time_ratio"] = row["ours"]["wall_s"] / row["art"]["wall_s"]
            row["pass"] = bool(row["ours"]["success_rate"] >= row["art"]["success_rate"] and row["time_ratio"] <= 0.5)
            results["runs"].append(row)
            print(f"  {norm:4s} eps={eps:<4g} p_init={p_init:<4g}  ART success {row['art']['success_rate']:.4f} "
                  f"{row['art']['wall_s']:7.2f} s | ours success {row['ours']['success_rate']:.4f} "
                  f"{row['ours']['wall_s']:7.2f} s | time ratio {row['time_ratio']:.3f} -> "
                  f"{'PASS' if row['pass'] else 'FAIL'}", flush=True)
        # the whole check as a user runs it: fresh session, clean pass, verification included (default p_init)
        t0 = time.perf_counter()
        audit = run_audit({"model": {"path": str(model_path), "device": args.device},
                           "data": {"path": str(data_npz), "x": "x", "y": "y"}, "seed": 0,
                           "checks": [{"use": "robustness.square_attack",
                                       "with": {"eps": eps, "norm": norm, "max_queries": args.iters + 1,
                                                "clip": [0.0, 1.0], "limit": None}}]},
                          disable=["bias", "sparsity", "transfer", "torch"], workdir=tmp)
        t_check = time.perf_counter() - t0
        m = audit.metrics("robustness.square_attack")
        results["checks"].append({"norm": norm, "eps": eps, "success_rate": m["success_rate"], "wall_s": t_check,
                                  "attack_s": m["duration_s"], "median_queries": m["median_queries"],
                                  "unverified": m["unverified"]})
        print(f"  {norm:4s} eps={eps:<4g} the check (run_audit, defaults): success {m['success_rate']:.4f}, "
              f"{t_check:.2f} s in all ({m['duration_s']:.2f} s attacking), {m['unverified']} unverified",
              flush=True)
    results["pass"] = all(r["pass"] for r in results["runs"])
    return results


def main() -> int:
    """Parse arguments, run, print and save the figures; exit 1 if a criterion is not met."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=1000, help="iteration budget K (ART max_iter)")
    ap.add_argument("--n", type=int, default=1000, help="at most this many samples")
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each attack (min is kept)")
    ap.add_argument("--device", default="auto", help="model.device for ONNX Runtime (auto, cpu, cuda)")
    ap.add_argument("--quick", action="store_true", help="K = 100 and 200 samples")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness_square.json")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.n, args.repeats = 100, 200, 1
    try:
        import art  # noqa: F401
    except ImportError:
        print("ART is not installed here: run benchmarks/run_bench_robustness.sh (its own environment)",
              file=sys.stderr)
        return 2
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"figures: {args.out}; overall {'PASS' if res['pass'] else 'FAIL'}")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
