"""Small models and data for the bias plugin's tests (numpy-trained weights written with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.testing import save_model


def make_softmax_model(path: Path, weight: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...],
                       *, with_hidden: bool = False) -> Path:
    """``softmax(flatten(x) @ weight + bias)`` for inputs of per-sample shape ``input_shape``.

    With ``with_hidden`` the logits are also exposed as an intermediate tensor named ``hidden`` (for probes).
    IR version 9: onnx 1.23 writes IR 14, which onnxruntime 1.31 rejects.
    """
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weight, np.float32), "W")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "B")
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "B"], ["hidden"]),
             helper.make_node("Softmax", ["hidden"], ["probs"], axis=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", weight.shape[1]])
    g = helper.make_graph(nodes, "softmax_reg", [x], [y], initializer=[w, b])
    if with_hidden:
        g.value_info.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", weight.shape[1]]))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bias-tests")
    return save_model(m, path)


def identity_model(path: Path, n_classes: int) -> Path:
    """A model whose input row is its logits: ``softmax(x)``. Data ``x = log p`` gives probabilities ``p``
    exactly, so tests choose the predictions."""
    return make_softmax_model(path, np.eye(n_classes), np.zeros(n_classes), (n_classes,))


def logits_for(pred: np.ndarray, n_classes: int, margin: float = 4.0) -> np.ndarray:
    """Input rows for :func:`identity_model` whose argmax is ``pred``."""
    x = np.zeros((len(pred), n_classes), np.float32)
    x[np.arange(len(pred)), pred] = margin
    return x


def train_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int = 300, lr: float = 0.5,
                  l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch gradient descent (numpy; deterministic)."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    w = np.zeros((xf.shape[1], n_classes))
    b = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    for _ in range(epochs):
        z = xf @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(xf)
        w -= lr * (xf.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w, b
