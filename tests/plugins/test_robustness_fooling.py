"""robustness.fooling: a linear model's highest reachable confidence over the input box in closed form, noise
confidences recomputed independently, one batched query per generation, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from robustness_helpers import audit, binary_linear, images, save, tiny_cnn

from auditor.testing import make_linear_classifier


def sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


def test_evolution_approaches_the_closed_form_maximum_confidence_of_a_linear_model(tmp_path: Path) -> None:
    # z1 − z0 = w·x + b over the box [0, 1]^d is largest at x_i = 1 where w_i > 0 (else 0), smallest at the
    # opposite corner: the most confident class-1 input has p1 = σ(Σ max(w_i, 0) + b), class 0 p0 =
    # σ(−Σ min(w_i, 0) − b). Nothing may exceed them; the evolution must come close.
    r = np.random.default_rng(0)
    w, b = r.normal(size=30) * 0.3, -0.2
    model = binary_linear(tmp_path, w, b)
    best1, best0 = sigmoid(np.maximum(w, 0).sum() + b), sigmoid(-np.minimum(w, 0).sum() - b)
    res = audit(tmp_path, [{"use": "robustness.fooling", "with": {"clip": [0, 1], "generations": 150,
                                                                  "n_noise": 500, "threshold": 0.9}}], model)
    res.assert_status("robustness.fooling", "info")
    met = res.metrics("robustness.fooling")
    evolved = [met["per_class"][k]["evolved"] for k in ("0", "1")]
    assert evolved[0] <= best0 + 1e-6 and evolved[1] <= best1 + 1e-6
    # within 2 % of the optimum's logit: the search finds the corner's sign pattern
    assert np.log(evolved[1] / (1 - evolved[1])) >= 0.98 * np.log(best1 / (1 - best1))
    assert np.log(evolved[0] / (1 - evolved[0])) >= 0.98 * np.log(best0 / (1 - best0))
    for k in ("0", "1"):
        assert met["per_class"][k]["evolved"] >= met["per_class"][k]["uniform"]
    assert met["max_confidence"] == pytest.approx(max(evolved))
    assert met["evolved_min_confidence"] == pytest.approx(min(evolved))
    assert met["fooled_class_rate"] == np.mean([e >= 0.9 for e in evolved])
    assert "no data" not in " ".join(res.check("robustness.fooling").notes)


def test_noise_confidences_match_an_independent_computation(tmp_path: Path) -> None:
    # with no data and clip [lo, hi], uniform noise is U(lo, hi) and Gaussian noise N(mid, (hi − lo)/4) clipped:
    # for a linear softmax model the expected top confidence is an integral we estimate independently
    r = np.random.default_rng(1)
    weight, bias = r.normal(size=(10, 3)), r.normal(size=3)
    model = make_linear_classifier(tmp_path / "m.onnx", weight, bias)
    res = audit(tmp_path, [{"use": "robustness.fooling", "with": {"clip": [-1, 1], "generations": 0,
                                                                  "n_noise": 20000}}], model)
    met = res.metrics("robustness.fooling")

    def top(x: np.ndarray) -> np.ndarray:
        z = x @ weight + bias
        p = np.exp(z - z.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).max(1)

    q = np.random.default_rng(99)
    u = top(q.uniform(-1, 1, (200000, 10)))
    g = top(np.clip(q.normal(0.0, 0.5, (200000, 10)), -1, 1))
    assert met["uniform"]["mean_confidence"] == pytest.approx(u.mean(), abs=0.005)
    assert met["gaussian"]["mean_confidence"] == pytest.approx(g.mean(), abs=0.005)
    assert met["noise_fooled_rate"] == pytest.approx(((u >= 0.99).mean() + (g >= 0.99).mean()) / 2, abs=0.01)
    # one probe for the number of classes, two noise batches, then the first population (16 per class)
    assert met["queries"] == 1 + 40000 + 3 * 16


def test_queries_are_one_batch_per_generation_for_every_class(tmp_path: Path) -> None:
    x = images(40)
    model = tiny_cnn(tmp_path / "m.onnx", gain=6.0)
    res = audit(tmp_path, [{"use": "robustness.fooling", "with": {"generations": 7, "population": 5,
                                                                  "n_noise": 11}}],
                model, save(tmp_path, "d.npz", x=x))
    met = res.metrics("robustness.fooling")
    assert met["n_classes_evolved"] == 4
    assert met["queries"] == 1 + 2 * 11 + (7 + 1) * 4 * 5  # the plan's probe for the number of classes
    assert "noise and evolution within [0, 1] (inferred from the data)" in res.check("robustness.fooling").notes
    assert set(met["per_class"]) == {"0", "1", "2", "3"}


def test_class_choice_and_seeds(tmp_path: Path) -> None:
    r = np.random.default_rng(2)
    model = make_linear_classifier(tmp_path / "m.onnx", r.normal(size=(6, 30)), r.normal(size=30))
    spec = [{"use": "robustness.fooling", "with": {"clip": [0, 1], "generations": 5, "n_noise": 50,
                                                   "max_classes": 4}}]
    a = audit(tmp_path, spec, model, seed=1)
    b = audit(tmp_path, spec, model, seed=1)
    assert a.metrics("robustness.fooling") == b.metrics("robustness.fooling")
    assert a.metrics("robustness.fooling")["n_classes_evolved"] == 4
    assert any("evolved 4 of 30 classes" in n for n in a.check("robustness.fooling").notes)
    only = audit(tmp_path, [{"use": "robustness.fooling", "with": {"clip": [0, 1], "generations": 2,
                                                                   "classes": [3, 7]}}], model)
    evolved = {k for k, v in only.metrics("robustness.fooling")["per_class"].items() if v["evolved"] is not None}
    assert evolved == {"3", "7"}


def test_without_data_or_range_it_is_skipped(tmp_path: Path) -> None:
    model = make_linear_classifier(tmp_path / "m.onnx", np.ones((3, 2)), np.zeros(2))
    res = audit(tmp_path, [{"use": "robustness.fooling"}], model)
    res.assert_status("robustness.fooling", "skipped")
    assert "clip" in (res.check("robustness.fooling").skip_reason or "")
