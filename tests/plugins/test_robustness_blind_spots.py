"""robustness.blind_spots: where a linear model's prediction flips along a path, in closed form; an
under-sensitive model found so; batched stages; seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from auditor_robustness.blind_spots import held_along, pick_pairs
from robustness_helpers import audit, binary_linear, save


def margin_data(n: int, w: np.ndarray, b: float, m_pos: float, m_neg: float, seed: int = 0):  # type: ignore[no-untyped-def]
    """Rows whose margin w·x + b is exactly m_pos (class 1) or m_neg (class 0), other directions random."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, len(w))) * 2
    x -= np.outer(x @ w / (w @ w), w)  # remove the component along w
    y = (r.random(n) < 0.5).astype(np.int64)
    target = np.where(y == 1, m_pos, m_neg)
    x += np.outer((target - b) / (w @ w), w)
    return x.astype(np.float32), y


def test_linear_model_flips_where_the_closed_form_says(tmp_path: Path) -> None:
    # on x_s + α(x_t − x_s) the margin is m_s + α(m_t − m_s): the class changes at α = m_s / (m_s − m_t).
    # With margins +3 (class 1) and −1 (class 0): α = 3/4 from a class-1 source, 1/4 from a class-0 one.
    # conf_tol = 1 leaves only the prediction to hold, so with threshold 1/2 the blind spots are exactly the
    # class-1 sources, and mean α = 1/4 + 1/2 · blind_spot_rate.
    r = np.random.default_rng(0)
    w, b = r.normal(size=12), 0.1
    x, y = margin_data(400, w, b, 3.0, -1.0)
    model = binary_linear(tmp_path, w, b)
    res = audit(tmp_path, [{"use": "robustness.blind_spots",
                            "with": {"conf_tol": 1.0, "pairs": 300, "random_directions": 0}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    res.assert_status("robustness.blind_spots", "info")
    met = res.metrics("robustness.blind_spots")
    precision = 1 / (16 * 2**6)
    assert met["n_pairs"] == 300
    assert 0.3 < met["blind_spot_rate"] < 0.7
    assert met["mean_alpha"] == pytest.approx(0.25 + 0.5 * met["blind_spot_rate"], abs=2 * precision)
    assert min(abs(met["median_alpha"] - 0.25), abs(met["median_alpha"] - 0.75)) <= 2 * precision


def test_confidence_tolerance_stops_the_path_early(tmp_path: Path) -> None:
    # p1 = σ(m); from a class-1 source at m = 3 the class-1 probability drops by 0.05 at
    # m* = logit(σ(3) − 0.05), reached at α = (3 − m*) / 4, well before the flip at 3/4
    r = np.random.default_rng(1)
    w, b = r.normal(size=8), 0.0
    x, y = margin_data(300, w, b, 3.0, -3.0)
    model = binary_linear(tmp_path, w, b)
    res = audit(tmp_path, [{"use": "robustness.blind_spots",
                            "with": {"conf_tol": 0.05, "pairs": 200, "random_directions": 0}}],
                model, save(tmp_path, "d.npz", x=x, y=y))
    s3 = 1 / (1 + np.exp(-3.0))
    m_star = np.log((s3 - 0.05) / (1 - s3 + 0.05))
    alpha = (3 - m_star) / 6  # margins +3 and −3: the pair's margin moves by 6 over the path
    met = res.metrics("robustness.blind_spots")
    assert met["median_alpha"] == pytest.approx(alpha, abs=2 / (16 * 2**6))
    assert met["blind_spot_rate"] == 0.0


def test_random_directions_hold_as_far_as_the_closed_form_says(tmp_path: Path) -> None:
    # the model reads feature 0 only: from x_s along a unit direction u the class holds until
    # x_s0 + ρ u_0 = 0, i.e. ρ* = −x_s0 / u_0 when u_0 points toward the boundary (else beyond any radius).
    # With radii up to R = ‖x_t − x_s‖, the share of (pair, direction) held to at least R/2 is an expectation
    # over sources, targets of the other class and uniform directions: estimated here by Monte Carlo.
    r = np.random.default_rng(2)
    d = 10
    x = r.normal(size=(600, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    w = np.zeros(d)
    w[0] = 2.0
    res = audit(tmp_path, [{"use": "robustness.blind_spots",
                            "with": {"pairs": 600, "random_directions": 4, "conf_tol": 1.0}}],
                binary_linear(tmp_path, w, 0.0), save(tmp_path, "d.npz", x=x, y=y))
    met = res.metrics("robustness.blind_spots")
    q = np.random.default_rng(7)
    k = 200000
    s = q.integers(0, 600, k)
    t = q.integers(0, 600, k)
    t = np.where(y[t] == y[s], q.integers(0, 600, k), t)
    keep = y[t] != y[s]
    s, t = s[keep], t[keep]
    u = q.normal(size=(len(s), d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x64 = x.astype(np.float64)
    radius = np.linalg.norm(x64[t] - x64[s], axis=1)
    toward = u[:, 0] * x64[s, 0] < 0
    reach = np.where(toward, np.minimum(-x64[s, 0] / np.where(toward, u[:, 0], 1.0) / radius, 1.0), 1.0)
    assert met["random_blind_spot_rate"] == pytest.approx(np.mean(reach >= 0.5), abs=0.04)
    assert met["random_median_fraction"] == pytest.approx(np.median(reach), abs=0.05)


def test_held_along_is_a_prefix_then_a_bisection() -> None:
    edge = np.array([0.3, 0.55, 1.0, 0.0])
    calls: list[int] = []

    def path(t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        calls.append(len(t))
        return np.stack([t, rows.astype(float)], axis=1)

    def held(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[:, 0] <= edge[rows] + 1e-12

    got = held_along(path, held, 4, 8, 10)
    assert got[:2] == pytest.approx(edge[:2], abs=1 / (8 * 2**10))
    assert got[2] == 1.0 and got[3] < 1 / (8 * 2**10)
    assert calls[0] == 4 * 8 and len(calls) == 11  # one batched call for the grid, one per bisection step


def test_pairs_are_of_different_classes_and_seeded(tmp_path: Path) -> None:
    cls = np.array([0, 0, 0, 1, 2, 2])
    src, tgt = pick_pairs(cls, 50, np.random.default_rng(0))
    assert len(src) == 50 and np.all(cls[src] != cls[tgt])
    s2, t2 = pick_pairs(cls, 50, np.random.default_rng(0))
    assert np.array_equal(src, s2) and np.array_equal(tgt, t2)
    r = np.random.default_rng(3)
    w = r.normal(size=5)
    x, y = margin_data(200, w, 0.0, 2.0, -2.0)
    model = binary_linear(tmp_path, w, 0.0)
    data = save(tmp_path, "d.npz", x=x, y=y)
    spec = [{"use": "robustness.blind_spots", "with": {"pairs": 40, "limit": 100}}]
    a = audit(tmp_path, spec, model, data).metrics("robustness.blind_spots")
    assert a == audit(tmp_path, spec, model, data).metrics("robustness.blind_spots")
    notes = audit(tmp_path, spec, model, data).check("robustness.blind_spots").notes
    assert "sampled 100 of 200 rows (stratified by label)" in notes


def test_no_pair_of_different_classes_is_a_skip_with_its_reason(tmp_path: Path) -> None:
    # one class-1 row among 400: the single source is (with this seed) a class-0 row whose 64 draws of a target
    # all hit class 0; before, the merge failed on zero pairs and the check errored
    x = np.zeros((400, 2), np.float32)
    x[:, 0] = np.linspace(-1, -0.1, 400)
    x[0, 0] = 1.0
    res = audit(tmp_path, [{"use": "robustness.blind_spots", "with": {"pairs": 1, "random_directions": 0}}],
                binary_linear(tmp_path, np.array([10.0, 0.0]), 0.0), save(tmp_path, "d.npz", x=x))
    res.assert_status("robustness.blind_spots", "skipped")
    assert "no pair of different classes among 1 sources" in (res.check("robustness.blind_spots").skip_reason or "")
