"""Builders shared by the core tests: small ONNX models with known answers, written with onnx.helper.

Written with ``auditor.testing.save_model``: ONNX Runtime 1.31 cannot read the IR 14 that onnx 1.23 writes
by default."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from auditor.testing import save_model as save_proto

FLOAT = TensorProto.FLOAT


def save_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               inits: dict[str, np.ndarray], path: Path, *, opset: int = 17, ir: int | None = None,
               extra_opsets: Sequence[tuple[str, int]] = (), list_inits_as_inputs: bool = False) -> Path:
    """Write a graph; ``list_inits_as_inputs`` mimics old exporters (IR < 4) that list weights as inputs; ``ir``
    writes exactly that IR version (an old exporter's, or one too new for ONNX Runtime); by default
    ``auditor.testing.save_model`` writes one ONNX Runtime reads."""
    init_protos = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    ins = list(inputs)
    if list_inits_as_inputs:
        ins += [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                              list(np.asarray(v).shape)) for k, v in inits.items()]
    g = helper.make_graph(nodes, "test", ins, outputs, initializer=init_protos)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=opsets, producer_name="tests")
    if ir is None:
        return save_proto(m, path)
    m.ir_version = ir
    onnx.save(m, str(path))
    return path


def mlp_weights(n_in: int = 8, n_hidden: int = 16, n_out: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a 2-layer MLP."""
    r = np.random.default_rng(seed)
    return {
        "W1": r.normal(size=(n_in, n_hidden)).astype(np.float32),
        "b1": r.normal(size=n_hidden).astype(np.float32),
        "W2": r.normal(size=(n_hidden, n_out)).astype(np.float32),
        "b2": r.normal(size=n_out).astype(np.float32),
    }


def mlp_numpy(x: np.ndarray, w: dict[str, np.ndarray], softmax: bool = True) -> np.ndarray:
    """Reference forward pass of :func:`write_mlp` in numpy (float64)."""
    h = np.maximum(x.astype(np.float64) @ w["W1"] + w["b1"], 0)
    z = h @ w["W2"] + w["b2"]
    if not softmax:
        return z
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_mlp(path: Path, w: dict[str, np.ndarray], *, batch: int | str = "N", softmax: bool = True,
              **kw: object) -> Path:
    """x -> Gemm -> Relu -> Gemm (-> Softmax)."""
    n_in, n_out = w["W1"].shape[0], w["W2"].shape[1]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "W2", "b2"], ["logits"], name="fc2"),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
        out = "probs"
    return save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, [batch, n_in])],
                      [helper.make_tensor_value_info(out, FLOAT, [batch, n_out])], w, path, **kw)  # type: ignore[arg-type]


def blobs(n: int = 300, n_in: int = 8, w: dict[str, np.ndarray] | None = None,
          seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels; labels are the MLP's own argmax for most rows (so accuracy is high, not perfect)."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, n_in)).astype(np.float32)
    if w is None:
        return x, r.integers(0, 4, n)
    y = mlp_numpy(x, w).argmax(1)
    flip = r.random(n) < 0.1
    y = np.where(flip, (y + 1) % w["W2"].shape[1], y)
    return x, y.astype(np.int64)


def grouped_mlp_audit(tmp: Path) -> dict[str, Any]:
    """Files for an audit with a baseline, a reference and a group column: an MLP ``m.onnx``, a differently
    seeded ``b.onnx`` (baseline and reference) and ``d.npz`` with ``x``, ``y`` and ``site``. Returns the spec's
    ``baseline``/``references``/``data`` sections; the caller adds ``checks``."""
    w = mlp_weights()
    write_mlp(tmp / "m.onnx", w)
    write_mlp(tmp / "b.onnx", mlp_weights(seed=5))
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y, site=np.where(np.arange(len(y)) % 3 == 0, "a", "b"))
    return {"baseline": {"path": str(tmp / "b.onnx")}, "references": {"r": {"path": str(tmp / "b.onnx")}},
            "data": {"path": str(tmp / "d.npz"), "y": "y", "groups": ["site"]}}


def linear_image_model(path: Path, w: np.ndarray, b: np.ndarray, hw: int = 5) -> Path:
    """A linear classifier over NCHW RGB images: ``(N, 3, hw, hw)`` -> Flatten -> MatMul ``w`` (``3·hw², C``)
    -> Add ``b`` -> Softmax (with ``data.preprocess``, a linear model over normalised pixels)."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    return save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 3, hw, hw])],
                      [helper.make_tensor_value_info("p", FLOAT, ["N", w.shape[1]])],
                      {"W": w.astype(np.float32), "b": b.astype(np.float32)}, path)
