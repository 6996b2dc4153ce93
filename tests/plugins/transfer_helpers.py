"""Small models and data for the ``transfer`` plugin tests: numpy-trained MLPs on scikit-learn's digits,
linear image models and convolution stacks, written with ``onnx.helper`` (IR 9 for onnxruntime)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from auditor.testing import save_model


def _save(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray], path: Path) -> Path:
    g = helper.make_graph(nodes, "t", inputs, outputs,
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@dataclass
class MLP:
    """``softmax(relu(x W1 + b1) W2 + b2)``; the hidden ReLU output is the penultimate layer."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def hidden(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(x, np.float64) @ self.w1 + self.b1, 0.0)

    def pre(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.w1 + self.b1

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = self.hidden(x) @ self.w2 + self.b2
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def write(self, path: Path) -> Path:
        d = self.w1.shape[0]
        c = self.w2.shape[1]
        nodes = [
            helper.make_node("Gemm", ["x", "W1", "B1"], ["pre"], name="fc1"),
            helper.make_node("Relu", ["pre"], ["hidden"], name="relu1"),
            helper.make_node("Gemm", ["hidden", "W2", "B2"], ["logits"], name="fc2"),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
        ]
        return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                     [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", c])],
                     {"W1": self.w1, "B1": self.b1, "W2": self.w2, "B2": self.b2}, path)


def train_mlp(x: np.ndarray, y: np.ndarray, *, hidden: int = 24, seed: int = 0, steps: int = 150,
              lr: float = 0.02) -> MLP:
    """Full-batch Adam on cross-entropy; float32 weights so that ONNX Runtime computes the same thing."""
    rng = np.random.default_rng(seed)
    d, c = x.shape[1], int(y.max()) + 1
    params = [rng.normal(0, 1 / np.sqrt(d), (d, hidden)), np.zeros(hidden),
              rng.normal(0, 1 / np.sqrt(hidden), (hidden, c)), np.zeros(c)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(c)[y]
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = x @ w1 + b1
        h = np.maximum(pre, 0)
        z = h @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - onehot) / len(x)
        dh = dz @ w2.T * (pre > 0)
        grads = [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] = params[i] - lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    return MLP(*[np.asarray(p, np.float32).astype(np.float64) for p in params])


def digits(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` standardised digits images (64 features) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6)
    return x[:n].astype(np.float32), d.target[:n].astype(np.int64)


def write_linear_image(path: Path, w: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> Path:
    """``softmax(flatten(x) W + b)`` for image inputs of per-sample ``shape`` (NCHW or NHWC)."""
    c = w.shape[1]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", c])], {"W": w, "B": b}, path)


def write_conv_stack(path: Path, kernels: list[np.ndarray], classes: int = 3, seed: int = 0) -> Path:
    """Conv 3×3 (pad 1) + Relu for each kernel (out, in, 3, 3), then global average pooling, a Gemm and a
    Softmax; input (N, in, 8, 8)."""
    rng = np.random.default_rng(seed)
    nodes = []
    inits: dict[str, np.ndarray] = {}
    cur = "x"
    for i, k in enumerate(kernels):
        inits[f"K{i}"] = k
        nodes.append(helper.make_node("Conv", [cur, f"K{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        cur = f"r{i}"
    out_ch = kernels[-1].shape[0]
    inits["W"] = rng.normal(size=(out_ch, classes))
    inits["B"] = np.zeros(classes)
    nodes += [helper.make_node("GlobalAveragePool", [cur], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
              helper.make_node("Gemm", ["feat", "W", "B"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", kernels[0].shape[1], 8, 8])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])], inits, path)
