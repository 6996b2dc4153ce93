"""Build the demo model and data under specs/demo/ from scikit-learn's bundled digits (nothing downloaded).

A small MLP (64 -> 32 -> 10, ReLU) trained with scikit-learn, written to ONNX by hand with onnx.helper, plus
the held-out test split as test.npz (x: float32 pixels scaled to [0, 1], y: int64 labels) and a CSV copy
with a synthetic group column for bias checks. Run: python specs/make_demo.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT = Path(__file__).parent / "demo"


def export_mlp(clf: MLPClassifier, path: Path, name: str = "digits-mlp") -> None:
    """Write a fitted ReLU MLPClassifier as ONNX: Gemm/Relu layers, then Softmax (IR 9, opset 17)."""
    nodes, inits = [], []
    prev = "pixels"
    n_layers = len(clf.coefs_)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"fc{i}.weight"),
                  numpy_helper.from_array(b.astype(np.float32), f"fc{i}.bias")]
        out = f"fc{i}" if i < n_layers - 1 else "logits"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}"))
        prev = out
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])
    graph = helper.make_graph(nodes, name, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnx-auditor demo", producer_version="1")
    model.ir_version = 9  # onnx 1.23 writes IR 14 by default, which ONNX Runtime 1.31 cannot read
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> None:
    """Train, export, and write the data files."""
    OUT.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(x_tr, y_tr)
    export_mlp(clf, OUT / "model.onnx")
    # A weaker "last release" to show a baseline comparison: fewer training iterations.
    old = MLPClassifier(hidden_layer_sizes=(32,), max_iter=30, random_state=0).fit(x_tr, y_tr)
    export_mlp(old, OUT / "last_release.onnx", "digits-mlp-old")
    rng = np.random.default_rng(0)
    group = np.where(rng.random(len(y_te)) < 0.5, "a", "b")
    np.savez_compressed(OUT / "test.npz", x=x_te, y=y_te, group=group)
    np.savez_compressed(OUT / "train.npz", x=x_tr, y=y_tr)
    print(f"test accuracy (sklearn): {clf.score(x_te, y_te):.4f}; last release: {old.score(x_te, y_te):.4f}")


if __name__ == "__main__":
    main()
