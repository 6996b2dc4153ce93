"""robustness.fooling on a model with a second per-sample input (#15): the noise images and the evolved inputs
are fed the other input of real data rows (noise image i: sample row i mod m; class k's population: sample row
k mod m), unchanged; every confidence recomputed from the data with numpy. Without data there are no rows to
take that input from: a skip saying so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import FLOAT, save_model
from onnx import helper
from robustness_helpers import OTHERS

from auditor.testing import run_audit


def two_input(path: Path, w: np.ndarray, u: np.ndarray, b: np.ndarray) -> Path:
    """``logits = x W + h[0] U + b`` with a state ``h`` shaped ``[1, N, 3]`` (batch on its second axis), softmax."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Squeeze", ["h", "axes"], ["h0"]),
             helper.make_node("MatMul", ["h0", "U"], ["hu"]), helper.make_node("Add", ["xw", "hu"], ["s"]),
             helper.make_node("Add", ["s", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", w.shape[0]]),
                       helper.make_tensor_value_info("h", FLOAT, [1, "N", 3])],
               [helper.make_tensor_value_info("p", FLOAT, ["N", w.shape[1]])],
               {"W": w.astype(np.float32), "U": u.astype(np.float32), "b": b.astype(np.float32),
                "axes": np.array([0], np.int64)}, path)
    return path


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return np.asarray(e / e.sum(1, keepdims=True))


def _audit(tmp: Path, model: Path, with_: dict[str, object], data: bool = True):  # type: ignore[no-untyped-def]
    spec: dict[str, object] = {"model": {"path": str(model)}, "seed": 0,
                               "checks": [{"use": "robustness.fooling", "with": with_}]}
    if data:
        spec["data"] = {"path": str(tmp / "d.npz"), "y": "y"}
    res = run_audit(spec, workdir=tmp, disable=OTHERS)
    assert res.report is not None, res.error
    return res


def test_noise_and_evolved_inputs_take_the_other_input_of_data_rows(tmp_path: Path) -> None:
    # W = 0: the class probabilities are softmax(h_r U + b) of the row r whose state is fed, whatever x is, so
    # every confidence the check reports is known from the data alone
    r = np.random.default_rng(0)
    m, c = 12, 4
    x = r.random((m, 5)).astype(np.float32)
    h = (r.normal(size=(m, 1, 3)) * 2).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, h=h, y=np.arange(m) % c)
    u, b = r.normal(size=(3, c)), r.normal(size=c)
    model = two_input(tmp_path / "m.onnx", np.zeros((5, c)), u, b)
    n_noise, pop, gens = 30, 3, 2
    res = _audit(tmp_path, model, {"n_noise": n_noise, "generations": gens, "population": pop, "clip": [0, 1]})
    res.assert_status("robustness.fooling", "info")
    met = res.metrics("robustness.fooling")
    p = softmax(h[:, 0] @ u + b)  # per data row
    noise = p[np.arange(n_noise) % m]  # noise image i is fed row i mod m
    for kind in ("uniform", "gaussian"):
        assert met[kind]["max_confidence"] == pytest.approx(noise.max(), abs=1e-6)
        assert met[kind]["mean_confidence"] == pytest.approx(noise.max(1).mean(), abs=1e-6)
    for k in range(c):  # class k's population is fed row k mod m
        entry = met["per_class"][str(k)]
        assert entry["uniform"] == pytest.approx(noise[:, k].max(), abs=1e-6)
        assert entry["evolved"] == pytest.approx(p[k % m, k], abs=1e-6)
    assert met["queries"] == 1 + 2 * n_noise + (gens + 1) * c * pop
    notes = " ".join(res.check("robustness.fooling").notes)
    assert "other per-sample input(s) h" in notes and "row i mod 12" in notes


def test_evolution_with_a_fed_state_stays_below_the_closed_form_bound(tmp_path: Path) -> None:
    # two classes: z1 − z0 = w·x + v·h_r + β; over x in [0, 1]^d the most confident class-1 input has
    # p1 = σ(Σ max(w_i, 0) + v·h_r + β) for the state h_r its population is fed (row 1 mod m = row 1)
    r = np.random.default_rng(1)
    m, d = 10, 20
    h = r.normal(size=(m, 1, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=r.random((m, d)).astype(np.float32), h=h, y=np.arange(m) % 2)
    w, v = r.normal(size=d) * 0.3, r.normal(size=3)
    model = two_input(tmp_path / "m.onnx", np.stack([np.zeros(d), w], 1), np.stack([np.zeros(3), v], 1),
                      np.array([0.0, -0.2]))
    res = _audit(tmp_path, model, {"n_noise": 50, "generations": 120, "clip": [0, 1]})
    best1 = 1 / (1 + np.exp(-(np.maximum(w, 0).sum() + h[1, 0] @ v - 0.2)))
    got = res.metrics("robustness.fooling")["per_class"]["1"]["evolved"]
    assert got <= best1 + 1e-6
    assert np.log(got / (1 - got)) >= 0.95 * np.log(best1 / (1 - best1))


def test_without_data_a_second_input_has_no_rows_to_come_from(tmp_path: Path) -> None:
    model = two_input(tmp_path / "m.onnx", np.ones((5, 2)), np.ones((3, 2)), np.zeros(2))
    res = _audit(tmp_path, model, {"clip": [0, 1]}, data=False)
    res.assert_status("robustness.fooling", "skipped")
    assert res.check("robustness.fooling").skip_reason == (
        "the model takes other per-sample input(s) h besides 'x', and without data there are no rows to take "
        "them from")
