"""Small models and data with known answers for the robustness plugin's tests (written with onnx.helper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from auditor.testing import AuditResult, make_linear_classifier, run_audit, save_model

#: The built-in plugins other than this one stay off: these tests are about robustness alone.
OTHERS = ["bias", "sparsity", "transfer", "torch"]


def audit(tmp: Path, checks: list[dict[str, Any]], model: Path | dict[str, Any], data: Path | None = None,
          **extra: Any) -> AuditResult:
    """Run a real audit with the robustness plugin (as its entry point registers it); ``model`` is a path or
    the spec's whole ``model:`` mapping."""
    spec: dict[str, Any] = {"checks": checks, "seed": extra.pop("seed", 0), **extra}
    spec["model"] = model if isinstance(model, dict) else {"path": str(model)}
    if data is not None:
        spec.setdefault("data", {"path": str(data)})
    res = run_audit(spec, disable=OTHERS, workdir=tmp)
    assert res.report is not None, res.error
    return res


def binary_linear(tmp: Path, w: np.ndarray, b: float, name: str = "lin.onnx", softmax: bool = True) -> Path:
    """Two-class linear model whose logit difference is ``z1 − z0 = w·x + b``."""
    weight = np.stack([np.zeros_like(w), w], axis=1)
    return make_linear_classifier(tmp / name, weight, np.array([0.0, b]), softmax=softmax)


def save(tmp: Path, name: str, **arrays: np.ndarray) -> Path:
    """``np.savez`` into ``tmp``."""
    path = tmp / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def tiny_cnn(path: Path, layout: str = "NCHW", c: int = 3, hw: int = 8, classes: int = 4, seed: int = 0,
             gain: float = 1.0) -> Path:
    """Conv(3×3, pad 1) → Relu → Conv(3×3, stride 2) → Relu → Flatten → Gemm → Softmax with seeded random
    weights. ``layout="NHWC"`` computes the same function on NHWC inputs (a Transpose in front)."""
    r = np.random.default_rng(seed)
    k1 = r.normal(0, 0.5, (6, c, 3, 3)).astype(np.float32)
    k2 = r.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32)
    side = (hw - 3) // 2 + 1
    fc = (r.normal(0, 1, (classes, 8 * side * side)) * gain / np.sqrt(8 * side * side)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((k1, "k1"), (k2, "k2"), (fc, "fc"),
                                                          (np.zeros(classes, np.float32), "fb"))]
    n = helper.make_node
    first = "x"
    nodes = []
    if layout == "NHWC":
        nodes.append(n("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        first = "x_nchw"
    nodes += [
        n("Conv", [first, "k1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "k2"], ["c2"], strides=[2, 2]), n("Relu", ["c2"], ["r2"]),
        n("Flatten", ["r2"], ["f"], axis=1), n("Gemm", ["f", "fc", "fb"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["probs"], axis=1),
    ]
    shape = ["N", c, hw, hw] if layout == "NCHW" else ["N", hw, hw, c]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
                          initializer=inits)
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"), path)


def cnn_numpy_probs(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities of a model through a plain ONNX Runtime session on CPU (an independent reading)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0], np.float64)


def images(n: int, c: int = 3, hw: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1], NCHW, with some exact 0 and 1 values (to test clipping)."""
    r = np.random.default_rng(seed)
    base = r.random((n, c, 1, 1)) * 0.6 + 0.2
    grad = np.linspace(-0.3, 0.3, hw)[None, None, :, None] * r.normal(size=(n, c, 1, 1))
    x = np.clip(base + grad + 0.1 * r.normal(size=(n, c, hw, hw)), 0, 1)
    x[:, :, 0, 0] = 0.0
    x[:, :, -1, -1] = 1.0
    return x.astype(np.float32)


def export_mlp(clf: Any, path: Path) -> Path:
    """A fitted scikit-learn ReLU ``MLPClassifier`` as ONNX (Gemm/Relu, then Softmax)."""
    nodes, inits = [], []
    prev = "x"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = f"z{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        prev = out
        if i < last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"]))
            prev = f"a{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probs"], axis=1))
    n_in, n_out = clf.coefs_[0].shape[0], clf.coefs_[-1].shape[1]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
                          initializer=inits)
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"), path)


__all__ = ["OTHERS", "audit", "binary_linear", "cnn_numpy_probs", "export_mlp", "images",
           "save", "tiny_cnn"]
