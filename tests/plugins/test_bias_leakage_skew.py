"""bias.leakage (ridge probe against scikit-learn's RidgeClassifier) and bias.prediction_skew (against scipy
and hand-computed histograms)."""

from __future__ import annotations

from pathlib import Path

import auditor_bias
import numpy as np
import pytest
from auditor_bias.leakage import balanced_accuracy, cross_validated_probe, stratified_folds
from auditor_bias.skew import skew_stats
from bias_helpers import identity_model, logits_for, make_softmax_model

from auditor.testing import run_audit

OTHER_PLUGINS = ("performance", "robustness", "sparsity", "transfer", "torch")


@pytest.mark.parametrize(("n", "d", "k", "alpha"), [(150, 4, 2, 1.0), (200, 6, 3, 0.3), (40, 60, 3, 2.0)])
def test_probe_matches_sklearn_ridge_classifier(n: int, d: int, k: int, alpha: float) -> None:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n + d)
    lab = rng.integers(0, k, n)
    x = rng.normal(0, 1, (n, d)) + 0.8 * lab[:, None] * rng.normal(0, 1, d)
    x[:, 0] = 5.0  # a constant feature: scaled by 1, as StandardScaler does
    folds = stratified_folds(lab, 5, np.random.default_rng(0))
    ours = cross_validated_probe(x, lab, folds, alpha)
    ref = cross_val_predict(make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha)), x, lab,
                            cv=PredefinedSplit(folds))
    # d > n takes the dual solution: the same predictions
    assert np.array_equal(ours, ref)
    assert balanced_accuracy(lab, ours) == pytest.approx(balanced_accuracy_score(lab, ours), abs=1e-12)


def test_stratified_folds_balance_classes() -> None:
    lab = np.r_[np.zeros(53, int), np.ones(21, int), np.full(7, 2)]
    folds = stratified_folds(lab, 5, np.random.default_rng(1))
    for c, size in ((0, 53), (1, 21), (2, 7)):
        per = np.bincount(folds[lab == c], minlength=5)
        assert per.max() - per.min() <= 1 and per.sum() == size


def _leak_case(tmp_path: Path, leaky: bool, n: int = 240) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    f = rng.normal(0, 1, n).astype(np.float32)
    sex = (rng.random(n) < 0.35).astype(int)
    x = np.c_[f, sex].astype(np.float32)
    # hidden = [f, sex] (leaky) or [f, 0] (the model ignores the attribute)
    w = np.array([[1.0, 0.0], [0.0, 4.0 if leaky else 0.0]])
    model = make_softmax_model(tmp_path / f"m{leaky}.onnx", w, np.zeros(2), (2,), with_hidden=True)
    np.savez(tmp_path / "d.npz", x=x, y=(f > 0).astype(int), sex=sex)
    return {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz"), "groups": ["sex"]}}, x, sex


def test_leakage_through_the_tool(tmp_path: Path) -> None:
    base, x, sex = _leak_case(tmp_path, leaky=True)
    majority = max(sex.mean(), 1 - sex.mean())
    spec = {**base, "checks": [{"use": "bias.leakage", "with": {"features": "hidden"}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    res.assert_status("bias.leakage", "warn")
    m = res.metrics("bias.leakage")
    # the tensor holds the attribute itself: a linear probe reads it perfectly
    assert m["probe_accuracy"] == 1.0 and m["probe_balanced_accuracy"] == 1.0
    assert m["majority_rate"] == pytest.approx(majority)
    assert m["accuracy_advantage"] == pytest.approx(1.0 - majority)
    assert m["chance_balanced_accuracy"] == 0.5 and m["feature_dim"] == 2 and m["n"] == len(x)
    assert m["balanced_advantage"] == 0.5 and m["missing_group_rows"] == 0 and m["n_groups"] == 2

    base, x, sex = _leak_case(tmp_path, leaky=False)
    spec = {**base, "checks": [{"use": "bias.leakage", "with": {"features": "hidden"}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    res.assert_status("bias.leakage", "info")
    m = res.metrics("bias.leakage")
    assert m["probe_accuracy"] <= majority + 0.05
    assert abs(m["probe_balanced_accuracy"] - 0.5) < 0.1


def test_leakage_on_outputs_leave_one_out_matches_sklearn(tmp_path: Path) -> None:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = 80
    base, x, sex = _leak_case(tmp_path, leaky=True, n=n)
    # folds = n is leave-one-out: the folds no longer depend on the seed, so sklearn can replay them
    spec = {**base, "checks": [{"use": "bias.leakage", "with": {"folds": n, "alpha": 0.5}}]}
    m = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False).metrics("bias.leakage")
    z = x.astype(np.float64) @ np.array([[1.0, 0.0], [0.0, 4.0]])
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ref = cross_val_predict(make_pipeline(StandardScaler(), RidgeClassifier(alpha=0.5)), probs, sex, cv=LeaveOneOut())
    assert m["probe_accuracy"] == pytest.approx(np.mean(ref == sex), abs=1.5 / n)
    assert m["probe_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(sex, ref), abs=3 / n)


def test_skew_stats_against_scipy() -> None:
    from scipy import stats

    o = np.array([50, 30, 20, 0])
    e = np.array([25, 25, 40, 10])
    s = skew_stats(o, e)
    p, q = o / 100, e / 100
    assert s["chi2_distance"] == pytest.approx(0.5 * sum((a - b) ** 2 / (a + b) for a, b in zip(p, q)))
    assert s["pearson_chi2"] == pytest.approx(stats.chisquare(o, e).statistic)
    assert s["total_variation"] == pytest.approx(0.5 * np.abs(p - q).sum())
    assert skew_stats(e, e)["chi2_distance"] == 0.0


def test_prediction_skew_through_the_tool(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n = 300
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.5, 0, y)  # class 0 over-predicted
    model = identity_model(tmp_path / "m.onnx", 3)
    np.savez(tmp_path / "d.npz", x=logits_for(pred, 3), y=y)
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
            "checks": [{"use": "bias.prediction_skew"}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    res.assert_status("bias.prediction_skew", "warn")
    m = res.metrics("bias.prediction_skew")
    o, e = np.bincount(pred, minlength=3), np.bincount(y, minlength=3)
    assert m["predicted_counts"] == {str(k): int(v) for k, v in enumerate(o)}
    assert m["true_counts"] == {str(k): int(v) for k, v in enumerate(e)}
    p, q = o / n, e / n
    assert m["chi2_distance"] == pytest.approx(0.5 * np.sum((p - q) ** 2 / (p + q)))
    assert m["total_variation"] == pytest.approx(0.5 * np.abs(p - q).sum())
    assert m["most_overpredicted_class"] == "0"
    assert m["overprediction_ratio"] == pytest.approx(o[0] / e[0])
    assert m["most_underpredicted_class"] == str(int(np.argmin(o / e)))
    assert m["underprediction_ratio"] == pytest.approx((o / e).min())
    assert m["predicted_share"] == pytest.approx({str(k): v for k, v in enumerate(p)})
    assert m["true_share"] == pytest.approx({str(k): v for k, v in enumerate(q)})
    from scipy import stats

    assert m["pearson_chi2"] == pytest.approx(stats.chisquare(o, e).statistic)
    assert m["predicted_absent_classes"] == [] and m["n"] == n

    np.savez(tmp_path / "d.npz", x=logits_for(y, 3), y=y)  # perfect predictions: no skew
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    res.assert_status("bias.prediction_skew", "info")
    assert res.metrics("bias.prediction_skew")["chi2_distance"] == 0.0


def test_all_checks_through_installed_entry_point(tmp_path: Path) -> None:
    """The installed plugin (entry point), all four checks in one audit."""
    rng = np.random.default_rng(9)
    n = 200
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    sex = rng.choice(np.array(["f", "m"]), n)
    model = identity_model(tmp_path / "m.onnx", 2)
    np.savez(tmp_path / "d.npz", x=logits_for(pred, 2), y=y, sex=sex)
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz"), "groups": ["sex"]},
            "checks": [{"use": "bias.group_metrics", "with": {"bootstrap": 20}},
                       {"use": "bias.leakage"}, {"use": "bias.prediction_skew"},
                       {"use": "bias.shortcut", "with": {"transform": "set_feature", "feature": 0, "value": -1.0}}]}
    # other built-in plugins are switched off: only the installed `bias` entry point is under test here
    res = run_audit(spec, workdir=tmp_path, entry_points=True, disable=OTHER_PLUGINS)
    for c in ("bias.group_metrics", "bias.leakage", "bias.prediction_skew", "bias.shortcut"):
        assert res.check(c).status.value in ("info", "warn"), (c, res.check(c).error)
    assert res.check("bias.group_metrics").plugin == "bias"
    # logit 0 set to -1: exactly the rows predicted 0 (logits [4, 0]) flip to class 1
    m = res.metrics("bias.shortcut")
    assert m["flip_rate"] == pytest.approx(np.mean(pred == 0))
    assert m["flip_target_class"] == 1 and m["accuracy_change"] == pytest.approx(np.mean(y == 1) - np.mean(pred == y))


def test_prediction_skew_class_absent_from_labels(tmp_path: Path) -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 2, 1, 1, 2, 1])  # class 2 predicted but never a label
    model = identity_model(tmp_path / "m.onnx", 3)
    np.savez(tmp_path / "d.npz", x=logits_for(pred, 3), y=y)
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz")},
            "checks": [{"use": "bias.prediction_skew"}]}
    m = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False).metrics("bias.prediction_skew")
    assert m["predicted_absent_classes"] == ["2"]
    # p = (1/6, 3/6, 2/6), q = (3/6, 3/6, 0): ½[(2/6)²/(4/6) + 0 + (2/6)²/(2/6)] = ½(1/6 + 1/3) = 1/4
    assert m["chi2_distance"] == pytest.approx(0.25)
    # Pearson over the classes present in the labels: (1-3)²/3 + 0
    assert m["pearson_chi2"] == pytest.approx(4 / 3)
    assert m["most_underpredicted_class"] == "0" and m["underprediction_ratio"] == pytest.approx(1 / 3)
