"""Transfer checks on models with several data inputs (#15): the model's and each reference's other per-sample
inputs (a state) reach every forward pass, so CKA, agreement, LEEP and occlusion maps are computed; every number
is recomputed here with numpy from plain ONNX Runtime outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import FLOAT, save_model
from onnx import helper

from auditor.testing import run_audit


def cell(path: Path, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """``s = x W + h[0] U`` (a named tensor), ``logits = s + b``; the state ``h`` is ``[1, N, 3]``."""
    r = np.random.default_rng(seed)
    w = {"W": r.normal(size=(4, 3)).astype(np.float32), "U": r.normal(size=(3, 3)).astype(np.float32),
         "b": r.normal(size=3).astype(np.float32), "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Squeeze", ["h", "axes"], ["h0"]),
             helper.make_node("MatMul", ["h0", "U"], ["hu"]),
             helper.make_node("Add", ["xw", "hu"], ["s"]),
             helper.make_node("Relu", ["s"], ["feat"]),
             helper.make_node("Add", ["s", "b"], ["logits"])]
    save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                       helper.make_tensor_value_info("h", FLOAT, [1, "N", 3])],
               [helper.make_tensor_value_info("logits", FLOAT, ["N", 3])], w, path)
    return path, w


def ort_tensors(path: Path, x: np.ndarray, h: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """Tensors of the model straight from ONNX Runtime (intermediate ones exposed as outputs by hand)."""
    import onnx

    m = onnx.load(str(path))
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([helper.make_tensor_value_info(n, FLOAT, None) for n in names if n not in have])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(a, dtype=np.float64) for a in sess.run(names, {"x": x, "h": np.moveaxis(h, 0, 1)})]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return float(np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def test_similarity_transferability_and_occlusion_on_two_input_models(tmp_path: Path) -> None:
    model, _ = cell(tmp_path / "m.onnx", 0)
    ref, _ = cell(tmp_path / "r.onnx", 1)
    r_ = np.random.default_rng(2)
    n = 30
    x = r_.normal(size=(n, 4)).astype(np.float32)
    h = r_.normal(size=(n, 1, 3)).astype(np.float32)
    y = np.arange(n) % 3
    data = tmp_path / "d.npz"
    np.savez(data, x=x, h=h, y=y)
    r = run_audit({"model": {"path": str(model)}, "reference": {"path": str(ref)},
                   "data": {"path": str(data), "y": "y"}, "seed": 0,
                   "checks": [{"use": "transfer.similarity", "with": {"layers": ["feat"], "rsa": False}},
                              {"use": "transfer.transferability", "with": {"layer": "feat", "folds": 3}},
                              {"use": "transfer.attribution_distance",
                               "with": {"method": "occlusion", "baseline": "zero", "limit": n}}]},
                  workdir=tmp_path)
    assert r.exit_code == 0, r.error
    fm, lm = ort_tensors(model, x, h, ["feat", "logits"])
    fr, lr = ort_tensors(ref, x, h, ["feat", "logits"])
    sim = r.metrics("transfer.similarity")
    assert sim["cka_matrix"] == [[pytest.approx(linear_cka(fm, fr), abs=1e-9)]]
    assert sim["agreement"] == pytest.approx(float(np.mean(lm.argmax(1) == lr.argmax(1))), abs=1e-12)

    # LEEP of the model's class probabilities (softmax of its logits) for the labels y
    p = softmax(lm)
    joint = np.eye(3)[y].T @ p / n
    cond = joint / joint.sum(0)
    leep = float(np.mean(np.log(np.sum(cond[y] * p, axis=1))))
    assert r.metrics("transfer.transferability")["leep"] == pytest.approx(leep, abs=1e-9)

    # occlusion with patch 1 and a zero baseline: the drop of the predicted class's probability when one
    # coordinate of x is zeroed, the state held; cosine distance between the model's and the reference's maps
    def maps(path: Path, logits: np.ndarray) -> np.ndarray:
        t = logits.argmax(1)
        clean = softmax(logits)[np.arange(n), t]
        out = np.empty((n, 4))
        for j in range(4):  # four runs of the whole set, one per coordinate
            xo = x.copy()
            xo[:, j] = 0
            out[:, j] = clean - softmax(ort_tensors(path, xo, h, ["logits"])[0])[np.arange(n), t]
        return out

    a, b = maps(model, lm), maps(ref, lr)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    att = r.metrics("transfer.attribution_distance")
    assert att["n"] == n and att["distance"] == pytest.approx(float(np.mean(1 - cos)), abs=1e-6)
