"""robustness.square_attack: a linear model's minimal adversarial distance in closed form, ε and the valid range
respected to the last bit, verification in a fresh session, batched queries, any layout, seeds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from auditor_robustness._common import Geometry
from auditor_robustness.square import SquareAttack, p_selection, perturbation_norms, square_attack
from robustness_helpers import audit, binary_linear, cnn_numpy_probs, images, save, tiny_cnn

from auditor.model import ModelConfig, ModelHandle
from auditor.testing import make_linear_classifier as make_model


def linear_case(n: int = 400, d: int = 16, seed: int = 0) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    w = r.normal(size=d)
    x = r.normal(size=(n, d)).astype(np.float32)
    m = x.astype(np.float64) @ w + 0.2
    return w, 0.2, x, (m > 0).astype(np.int64)


def numpy_log_probs(w: np.ndarray, b: float, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    """The binary linear model's log-probabilities in numpy (and a record of each call's batch size)."""

    def f(xc: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(xc))
        z = xc.reshape(len(xc), -1).astype(np.float64) @ w + b
        return np.stack([-np.logaddexp(0, z), -np.logaddexp(0, -z)], axis=1)

    return f


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_minimal_adversarial_distance_in_closed_form(tmp_path: Path, norm: str) -> None:
    # For z = w·x + b the nearest point of the other class is at |z| / ‖w‖₁ (L∞) or |z| / ‖w‖₂ (L2)
    # (Tanay & Griffin's linear case). So: no sample farther than ε is ever fooled, every adversarial
    # perturbation is at least that long, and samples well inside the ball are found.
    w, b, x, y = linear_case()
    z = np.abs(x.astype(np.float64) @ w + b)
    dist = z / (np.abs(w).sum() if norm == "linf" else np.linalg.norm(w))
    eps = float(np.median(dist))
    model = binary_linear(tmp_path, w, b)
    res = audit(tmp_path, [{"use": "robustness.square_attack",
                            "with": {"eps": eps, "norm": norm, "max_queries": 1000, "limit": None}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    res.assert_status("robustness.square_attack", "info")
    met = res.metrics("robustness.square_attack")
    art = res.check("robustness.square_attack").artifacts
    rows = art["rows"]
    assert met["n_attacked"] == 400 and met["clean_accuracy"] == 1.0
    assert np.all(dist[rows] <= eps * (1 + 1e-6))  # nothing beyond ε is fooled
    got = perturbation_norms(x[rows], art["adversarial_examples"], norm)
    assert np.all(got >= dist[rows] * (1 - 1e-5))  # no adversarial example beats the minimal distance
    assert np.all(got <= eps)
    easy = dist < eps / 2
    assert np.isin(np.flatnonzero(easy), rows).mean() >= 0.95  # the attack finds those well inside the ball
    assert met["success_rate"] == pytest.approx(len(rows) / 400)
    assert met["robust_accuracy"] == pytest.approx(1 - len(rows) / 400)
    assert met["robust_accuracy"] >= np.mean(dist > eps)
    assert met["median_perturbation_norm"] == pytest.approx(float(np.median(got)))
    assert met["max_perturbation_norm"] <= eps and met["unverified"] == 0
    assert 1 <= met["median_queries"] <= 1000


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_and_range_hold_in_float64_for_values_float32_cannot_hold(norm: str) -> None:
    # ε = 0.1 and the range ends are not float32 numbers: rounding must never put a value outside
    w, b, x, y = linear_case(n=300, d=40, seed=2)
    x = np.clip(x / 4 + 0.5, 0.05, 0.95).astype(np.float32).reshape(300, 1, 1, 40)
    lo, hi = 0.1, 0.9  # some data lie outside: each such value's range is widened to include it
    eps = 0.1 if norm == "linf" else 0.7
    res = square_attack(numpy_log_probs(w * 3, -1.5 * w.sum() + b), x, y, eps=eps, norm=norm, max_queries=300,
                        lo=lo, hi=hi, rng=np.random.default_rng(0))
    x64, a64 = x.astype(np.float64), res.x_adv.astype(np.float64)
    assert np.all(perturbation_norms(x64, a64, norm) <= eps)
    assert np.all(a64 >= np.minimum(lo, x64)) and np.all(a64 <= np.maximum(hi, x64))
    assert res.fooled.any()


def test_queries_are_batched_across_samples_and_stop_per_sample() -> None:
    w, b, x, y = linear_case(n=200)
    calls: list[int] = []
    res = square_attack(numpy_log_probs(w, b, calls), x.reshape(200, 1, 1, 16), y, eps=0.5, max_queries=100,
                        rng=np.random.default_rng(0))
    assert calls[0] == 200  # the initialisation: one call with every sample
    assert len(calls) <= 100  # one call per step, never one per sample
    assert calls == sorted(calls, reverse=True)  # fooled samples leave the batch
    assert int(res.queries.sum()) == sum(calls)
    assert np.all(res.queries[res.fooled] < 100)


def test_p_selection_is_the_published_schedule() -> None:
    assert [p_selection(0.8, it, 10000) for it in (0, 10, 11, 50, 51, 200, 201, 500, 501)] == \
        pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05])
    assert p_selection(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    assert p_selection(0.8, 2, 1000) == pytest.approx(0.4)  # relative to the budget


def test_images_in_either_layout_give_the_same_attack(tmp_path: Path) -> None:
    x = images(60)
    nchw = tiny_cnn(tmp_path / "a.onnx", "NCHW", gain=6.0)
    nhwc = tiny_cnn(tmp_path / "b.onnx", "NHWC", gain=6.0)
    y = cnn_numpy_probs(nchw, x).argmax(1)
    spec = [{"use": "robustness.square_attack", "with": {"eps": 0.05, "max_queries": 200}}]
    a = audit(tmp_path, spec, nchw, save(tmp_path, "a.npz", x=x, y=y))
    b = audit(tmp_path, spec, nhwc, save(tmp_path, "b.npz", x=x.transpose(0, 2, 3, 1), y=y))
    ma, mb = a.metrics("robustness.square_attack"), b.metrics("robustness.square_attack")
    for m in (ma, mb):
        m.pop("duration_s")
    assert ma == mb and ma["success_rate"] > 0
    adv_a = a.check("robustness.square_attack").artifacts["adversarial_examples"]
    adv_b = b.check("robustness.square_attack").artifacts["adversarial_examples"]
    assert np.array_equal(adv_a.transpose(0, 2, 3, 1), adv_b)
    assert "inputs clipped to [0, 1] (inferred from the data)" in a.check("robustness.square_attack").notes


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_reported_example_is_in_the_ball_in_range_and_misclassified_by_another_session(
        tmp_path: Path, norm: str) -> None:
    x = images(80)
    model = tiny_cnn(tmp_path / "m.onnx", gain=6.0)
    y = cnn_numpy_probs(model, x).argmax(1)
    eps = 0.04 if norm == "linf" else 0.4
    res = audit(tmp_path, [{"use": "robustness.square_attack", "with": {"eps": eps, "norm": norm,
                                                                        "clip": [0, 1], "max_queries": 300}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    art = res.check("robustness.square_attack").artifacts
    adv, rows = art["adversarial_examples"], art["rows"]
    assert len(rows) > 5
    assert np.all(perturbation_norms(x[rows], adv, norm) <= eps)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.all(cnn_numpy_probs(model, adv).argmax(1) != y[rows])  # an independent session agrees


def test_verification_rejects_what_it_cannot_confirm(tmp_path: Path) -> None:
    w = np.array([1.0, -1.0])
    model = binary_linear(tmp_path, w, 0.0)
    ctx = SimpleNamespace(model=ModelHandle(ModelConfig(path=model)))
    geo = Geometry.of(np.zeros((1, 2), np.float32), None)
    x = np.tile(np.array([0.25, 0.0], np.float32), (4, 1)).reshape(4, 1, 1, 2)  # class 1: w·x > 0
    adv = np.array([[0.0, 0.05],    # class 0, |δ|∞ = 0.25
                    [0.25, 0.01],   # still class 1
                    [-0.25, 0.0],   # class 0, |δ|∞ = 0.5
                    [0.1, 0.2]],    # class 0, |δ|∞ = 0.2
                   np.float32).reshape(4, 1, 1, 2)
    y = np.ones(4, np.int64)

    def verify(eps: float, hi: float) -> list[bool]:
        ok, _ = SquareAttack.verify_with_probs(ctx, geo, x, adv, y, eps=eps, norm="linf", lo=-1.0, hi=hi)  # type: ignore[arg-type]
        return ok.tolist()

    assert verify(0.25, 1.0) == [True, False, False, True]  # the ball is closed
    assert verify(0.6, 1.0) == [True, False, True, True]
    assert verify(0.2499, 1.0) == [False, False, False, True]
    assert verify(0.25, 0.04) == [False, False, False, False]  # 0.05 and 0.2 lie above the range


def test_seeds_make_runs_identical(tmp_path: Path) -> None:
    w, b, x, y = linear_case(n=120)
    model = binary_linear(tmp_path, w, b)
    data = save(tmp_path, "d.npz", x=x, y=y)
    spec = [{"use": "robustness.square_attack", "with": {"eps": 0.2, "max_queries": 150}}]
    runs = [audit(tmp_path, spec, model, data, seed=s).metrics("robustness.square_attack") for s in (5, 5, 6)]
    for m in runs:
        m.pop("duration_s")
    assert runs[0] == runs[1]
    assert runs[0]["queries_total"] != runs[2]["queries_total"]


def test_without_labels_the_models_own_predictions_are_attacked(tmp_path: Path) -> None:
    w, b, x, _ = linear_case(n=100)
    model = binary_linear(tmp_path, w, b)
    res = audit(tmp_path, [{"use": "robustness.square_attack", "with": {"eps": 0.3, "max_queries": 100,
                                                                        "restarts": 2, "limit": 50}}],
                model, save(tmp_path, "d.npz", x=x))
    met = res.metrics("robustness.square_attack")
    notes = res.check("robustness.square_attack").notes
    assert met["n_attacked"] == 50 and met["clean_accuracy"] is None
    assert "no labels: the model's own predictions are the reference" in notes
    assert "sampled 50 of 100 rows (uniform)" in notes
    assert met["success_rate"] > 0


def test_default_eps_is_said_in_the_report(tmp_path: Path) -> None:
    x = images(20)
    model = tiny_cnn(tmp_path / "m.onnx")
    res = audit(tmp_path, [{"use": "robustness.square_attack", "with": {"max_queries": 20}}], model,
                save(tmp_path, "d.npz", x=x))
    assert res.metrics("robustness.square_attack")["eps"] == pytest.approx(0.03)
    assert any(n.startswith("eps = 0.03 (0.03 of the input range 1") for n in
               res.check("robustness.square_attack").notes)


def test_the_classifier_reads_logits_probabilities_and_raw_scores_alike(tmp_path: Path) -> None:
    from auditor_robustness._common import Classifier

    r = np.random.default_rng(4)
    weight, bias = r.normal(size=(6, 3)) * 30, r.normal(size=3)  # large logits: float32 softmax saturates
    x = r.normal(size=(50, 6)).astype(np.float32)
    z = x.astype(np.float64) @ weight.astype(np.float32).astype(np.float64) + bias.astype(np.float32)
    want = z - z.max(1, keepdims=True)
    want -= np.log(np.exp(want).sum(1, keepdims=True))
    geo = Geometry.of(x, None)
    xc = geo.canonical(x)
    soft = make_model(tmp_path / "soft.onnx", weight, bias, softmax=True)
    raw = make_model(tmp_path / "raw.onnx", weight, bias, softmax=False)
    via_logits = Classifier(ModelHandle(ModelConfig(path=soft)), geo)
    via_probs = Classifier(ModelHandle(ModelConfig(path=soft)), geo, prefer_logits=False)
    via_raw = Classifier(ModelHandle(ModelConfig(path=raw)), geo)
    for clf in (via_logits, via_raw):
        for _ in range(2):  # the first call finds the score tensor, later calls fetch only it
            assert clf.log_probs(xc) == pytest.approx(want, abs=1e-4)
    assert via_logits._matrix == ("logits", True) and via_raw._matrix == ("probs", True)
    p = np.exp(want)
    for _ in range(2):
        assert via_probs.probs(xc) == pytest.approx(p, abs=1e-6)  # the model's own float32 softmax
    assert via_probs._matrix == ("probs", False)
    # where float32 probabilities round to 0 the logits still rank the classes
    with np.errstate(divide="ignore"):
        assert np.isinf(np.log(via_probs.probs(xc))).any()
    assert np.all(np.isfinite(via_logits.log_probs(xc)))
    assert via_logits.queries == via_probs.queries == 150
