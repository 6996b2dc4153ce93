"""performance.metrics against scikit-learn on the same predictions, for every kind of classifier output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from auditor_performance.metrics import expected_calibration_error
from builders import FLOAT, blobs, mlp_weights, save_model, write_mlp
from onnx import helper
from sklearn import metrics as skm

from auditor.testing import run_audit


def ort_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    """The model's outputs straight from ONNX Runtime (no auditor code involved)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def ece_reference(probs: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Guo et al. 2017, written plainly: bins (lo, hi] of confidence, weighted |accuracy - confidence|."""
    conf = probs.max(1)
    pred = probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mask = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs((pred[mask] == y[mask]).mean() - conf[mask].mean())
    return total


def test_ece_matches_the_plain_definition() -> None:
    r = np.random.default_rng(0)
    logits = r.normal(size=(500, 5)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = r.integers(0, 5, 500)
    for bins in (5, 15):
        assert expected_calibration_error(p, y, bins) == pytest.approx(ece_reference(p, y, bins), abs=1e-12)


def test_mlp_classifier_metrics_equal_sklearn(tmp_path: Path) -> None:
    w = mlp_weights(n_in=8, n_hidden=16, n_out=7)
    model = write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(400, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics", "with": {"top_k": 3}}]}, model=model,
                  data=tmp_path / "d.npz", workdir=tmp_path)
    m = r.metrics("performance.metrics")
    p = ort_outputs(model, x)  # the metric is checked on the model's own float32 outputs
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=3, labels=range(7)), abs=1e-9)
    p64 = p.astype(np.float64)
    p64 /= p64.sum(1, keepdims=True)  # float32 rows sum to 1 only up to rounding; both sides renormalise
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p64, labels=range(7)), rel=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(7)).tolist()
    rec = skm.recall_score(y, pred, average=None, labels=range(7), zero_division=np.nan)
    for c in range(7):
        assert m["per_class_recall"][str(c)] == pytest.approx(rec[c], abs=1e-12)
    assert m["ece"] == pytest.approx(ece_reference(p, y, 15), abs=1e-5)


def test_many_classes_report_the_largest_confusions_instead_of_the_matrix(tmp_path: Path) -> None:
    """An ImageNet-sized head (here 150 classes): no 150 x 150 matrix in the report (a 1000-class model's million
    cells made the check error), the largest off-diagonal cells of scikit-learn's confusion matrix instead."""
    w = mlp_weights(n_in=8, n_hidden=16, n_out=150)
    model = write_mlp(tmp_path / "m.onnx", w)
    x = np.random.default_rng(4).normal(size=(3000, 8)).astype(np.float32)
    y = np.random.default_rng(5).integers(0, 150, 3000)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 0.0}}}]}, model=model,
                  data=tmp_path / "d.npz", workdir=tmp_path)
    r.assert_status("performance.metrics", "pass")
    m = r.metrics("performance.metrics")
    assert "confusion_matrix" not in m and m["n_classes"] == 150
    cm = skm.confusion_matrix(y, ort_outputs(model, x).argmax(1), labels=range(150))
    np.fill_diagonal(cm, 0)
    got = m["top_confusions"]
    assert len(got) == min(100, int(np.count_nonzero(cm)))
    counts = [c["count"] for c in got]
    assert counts == sorted(np.sort(cm.ravel())[::-1][:len(got)].tolist(), reverse=True)
    for c in got:
        assert c["true"] != c["predicted"] and cm[int(c["true"]), int(c["predicted"])] == c["count"]


def test_logits_output_is_softmaxed(tmp_path: Path) -> None:
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w, softmax=False)
    x, y = blobs(200, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=tmp_path / "d.npz",
                  workdir=tmp_path)
    z = ort_outputs(model, x).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert r.metrics("performance.metrics")["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-6)
    assert "outputs read as logits" in r.check("performance.metrics").notes


def test_binary_sigmoid_output(tmp_path: Path) -> None:
    r0 = np.random.default_rng(0)
    wv = r0.normal(size=(5, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 5])],
                       [helper.make_tensor_value_info("p", FLOAT, ["N", 1])], {"w": wv}, tmp_path / "m.onnx")
    x = r0.normal(size=(300, 5)).astype(np.float32)
    p1 = 1 / (1 + np.exp(-(x @ wv)[:, 0].astype(np.float64)))
    y = (r0.random(300) < p1).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=tmp_path / "d.npz",
                  workdir=tmp_path)
    m = r.metrics("performance.metrics")
    assert m["n_classes"] == 2
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p1 > 0.5))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p1), rel=1e-4)


def test_scikit_learn_export_with_zipmap_and_string_labels(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    x, yi = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    names = np.array(["barolo", "grignolino", "barbera"])
    y = names[yi]
    clf = LogisticRegression(max_iter=5000).fit(x[::2], y[::2])
    onx = to_onnx(clf, x[:1], target_opset=17)
    (tmp_path / "skl.onnx").write_bytes(onx.SerializeToString())
    import csv

    with open(tmp_path / "test.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow([f"f{i}" for i in range(x.shape[1])] + ["cultivar"])
        for row, lab in zip(x[1::2], y[1::2]):
            wr.writerow([repr(float(v)) for v in row] + [lab])
    r = run_audit({"checks": [{"use": "performance.metrics"}],
                   "data": {"path": str(tmp_path / "test.csv"), "y": "cultivar"}},
                  model=tmp_path / "skl.onnx", workdir=tmp_path)
    m = r.metrics("performance.metrics")
    xt, yt = x[1::2], y[1::2]
    proba = clf.predict_proba(xt)
    assert m["classes"] == list(clf.classes_)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(yt, clf.predict(xt)), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(yt, proba, labels=clf.classes_), rel=1e-3)
    assert "label+probabilities" in r.check("performance.metrics").notes[0]


def test_regression_metrics_equal_sklearn(tmp_path: Path) -> None:
    r0 = np.random.default_rng(2)
    wv = r0.normal(size=(4, 1)).astype(np.float32)
    model = save_model([helper.make_node("MatMul", ["x", "w"], ["yhat"])],
                       [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
                       [helper.make_tensor_value_info("yhat", FLOAT, ["N", 1])], {"w": wv}, tmp_path / "m.onnx")
    x = r0.normal(size=(250, 4)).astype(np.float32)
    y = (x @ wv)[:, 0] + r0.normal(scale=0.3, size=250)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=tmp_path / "d.npz",
                  workdir=tmp_path)
    m = r.metrics("performance.metrics")
    pred = (x @ wv)[:, 0].astype(np.float64)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-5)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=1e-5)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)


def test_nan_outputs_are_reported_not_crashed_on(tmp_path: Path) -> None:
    """Sqrt of a negative input gives NaN for some samples: the check fails with a finding, no crash."""
    nodes = [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=1)]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("p", FLOAT, ["N", 3])], {}, tmp_path / "m.onnx")
    x = np.abs(np.random.default_rng(0).normal(size=(100, 3))).astype(np.float32)
    x[:7, 0] = -1.0
    y = x.argmax(1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=tmp_path / "d.npz",
                  workdir=tmp_path)
    r.assert_status("performance.metrics", "fail")
    m = r.metrics("performance.metrics")
    assert m["nonfinite_outputs"] == 7
    assert m["accuracy"] == pytest.approx(np.mean(np.sqrt(x[7:]).argmax(1) == y[7:]) * 93 / 100)
    assert "7 of 100 samples have NaN/inf outputs" in r.check("performance.metrics").findings[0].message


def test_calibration_bins_match_numpy_and_sum_to_the_ece(tmp_path: Path) -> None:
    w = mlp_weights(n_in=8, n_hidden=16, n_out=7)
    model = write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(400, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run_audit({"checks": [{"use": "performance.metrics", "with": {"ece_bins": 10}}]}, model=model,
                  data=tmp_path / "d.npz", workdir=tmp_path)
    m = r.metrics("performance.metrics")
    p = ort_outputs(model, x).astype(np.float64)
    conf, correct = p.max(1), p.argmax(1) == y
    # np.digitize with right=True puts c in bin i when edges[i-1] < c <= edges[i]: Guo et al.'s (lo, hi].
    idx = np.clip(np.digitize(conf, np.linspace(0, 1, 11), right=True) - 1, 0, 9)
    bins = m["calibration_bins"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 400
    for i, b in enumerate(bins):
        assert (b["lower"], b["upper"]) == pytest.approx((i / 10, (i + 1) / 10))
        sel = idx == i
        assert b["count"] == int(sel.sum())
        if sel.any():
            assert b["confidence"] == pytest.approx(conf[sel].mean(), abs=1e-6)
            assert b["accuracy"] == pytest.approx(correct[sel].mean(), abs=1e-12)
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    gap = sum(b["count"] / 400 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert m["ece"] == pytest.approx(gap, abs=1e-9)
