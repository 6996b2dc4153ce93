"""bias.group_metrics: hand-computed values, Fairlearn parity (1e-9), calibration error, bootstrap intervals
against scipy, missing and small groups, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import auditor_bias
import numpy as np
import pytest
from auditor_bias.group_metrics import disparities, group_counts, group_rates
from bias_helpers import identity_model, logits_for

from auditor.testing import run_audit, write_spec

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")


def _audit(tmp_path: Path, x: np.ndarray, y: np.ndarray, groups: dict[str, np.ndarray], n_classes: int,
           params: dict | None = None, gate: dict | None = None):
    model = identity_model(tmp_path / "m.onnx", n_classes)
    np.savez(tmp_path / "d.npz", x=x, y=y, **groups)
    entry: dict = {"use": "bias.group_metrics", "with": {"bootstrap": 0, **(params or {})}}
    if gate:
        entry["gate"] = gate
    spec = {"model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz"), "groups": list(groups)},
            "checks": [entry]}
    return run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)


def test_hand_computed_binary(tmp_path: Path) -> None:
    # group A: y 1 1 0 0, pred 1 0 0 0 -> sel 1/4, TPR 1/2, FPR 0, precision 1, acc 3/4
    # group B: y 1 1 0 0, pred 1 1 1 0 -> sel 3/4, TPR 1, FPR 1/2, precision 2/3, acc 3/4
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    g = np.array(["A"] * 4 + ["B"] * 4)
    res = _audit(tmp_path, logits_for(pred, 2), y, {"sex": g}, 2, {"min_group_size": 1})
    res.assert_status("bias.group_metrics", "info")
    m = res.metrics("bias.group_metrics")
    a, b = m["per_group"]["A"], m["per_group"]["B"]
    assert (a["count"], a["positives"]) == (4, 2)
    assert (a["selection_rate"], a["tpr"], a["fpr"], a["precision"], a["accuracy"]) == pytest.approx(
        (0.25, 0.5, 0.0, 1.0, 0.75))
    assert (b["selection_rate"], b["tpr"], b["fpr"], b["precision"], b["accuracy"]) == pytest.approx(
        (0.75, 1.0, 0.5, 2 / 3, 0.75))
    assert m["demographic_parity_difference"] == pytest.approx(0.5)
    assert m["demographic_parity_ratio"] == pytest.approx(1 / 3)
    assert m["equalized_odds_difference"] == pytest.approx(0.5)  # max(ΔTPR 0.5, ΔFPR 0.5)
    assert m["equalized_odds_ratio"] == pytest.approx(0.0)  # min(TPR 0.5/1, FPR 0/0.5)
    assert m["equal_opportunity_difference"] == pytest.approx(0.5)
    assert m["accuracy_difference"] == pytest.approx(0.0)
    assert m["worst_group_accuracy"] == pytest.approx(0.75)
    assert m["positive_class"] == 1 and m["mode"] == "binary"
    # probabilities are softmax([4, 0]) for every row: top-class confidence c, so ECE = |acc - c|
    c = 1 / (1 + np.exp(-4.0))
    assert a["calibration_error"] == pytest.approx(abs(0.75 - c), abs=1e-6)

    # positive_class 0 swaps the roles: selection rate of class 0 in A is 3/4, in B 1/4
    res0 = _audit(tmp_path, logits_for(pred, 2), y, {"sex": g}, 2, {"positive_class": 0, "min_group_size": 1})
    m0 = res0.metrics("bias.group_metrics")
    assert m0["per_group"]["A"]["selection_rate"] == pytest.approx(0.75)
    assert m0["positive_class"] == 0


def _random_case(rng: np.random.Generator, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, n_classes, n)
    # predictions right ~70% of the time, wrong ones spread over the classes
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, n_classes, n))
    return y, pred


def _fairlearn_row(y: np.ndarray, pred: np.ndarray, sf: object) -> dict[str, float]:
    fm = fairlearn_metrics
    return {
        "demographic_parity_difference": fm.demographic_parity_difference(y, pred, sensitive_features=sf),
        "demographic_parity_ratio": fm.demographic_parity_ratio(y, pred, sensitive_features=sf),
        "equalized_odds_difference": fm.equalized_odds_difference(y, pred, sensitive_features=sf),
        "equalized_odds_ratio": fm.equalized_odds_ratio(y, pred, sensitive_features=sf),
        "equal_opportunity_difference": fm.equal_opportunity_difference(y, pred, sensitive_features=sf),
        "equal_opportunity_ratio": fm.equal_opportunity_ratio(y, pred, sensitive_features=sf),
    }


def test_fairlearn_parity_binary_with_intersections(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.metrics import accuracy_score, precision_score

    rng = np.random.default_rng(1)
    n = 700
    y, pred = _random_case(rng, n, 2)
    sex = rng.choice(np.array(["f", "m"]), n, p=[0.3, 0.7])
    race = rng.integers(0, 3, n)
    # make group outcomes differ so the disparities are not ~0
    pred = np.where((sex == "f") & (rng.random(n) < 0.3), 1, pred)
    res = _audit(tmp_path, logits_for(pred, 2), y, {"sex": sex, "race": race}, 2)
    m = res.metrics("bias.group_metrics")
    sf = pd.DataFrame({"sex": sex, "race": race})
    expect = _fairlearn_row(y, pred, sf)
    for k, v in expect.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    frame = fairlearn_metrics.MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": fairlearn_metrics.selection_rate,
                 "tpr": fairlearn_metrics.true_positive_rate, "fpr": fairlearn_metrics.false_positive_rate,
                 "precision": lambda a, b: precision_score(a, b, zero_division=0),
                 "count": fairlearn_metrics.count},
        y_true=y, y_pred=pred, sensitive_features=sf)
    assert m["accuracy_difference"] == pytest.approx(frame.difference()["accuracy"], abs=1e-9)
    assert m["worst_group_accuracy"] == pytest.approx(frame.group_min()["accuracy"], abs=1e-9)
    assert m["n_groups"] == len(frame.by_group) == 6
    for (s, r), row in frame.by_group.iterrows():
        got = m["per_group"][f"sex={s}, race={r}"]
        for k in ("accuracy", "selection_rate", "tpr", "fpr", "precision"):
            assert got[k] == pytest.approx(row[k], abs=1e-9), (s, r, k)
        assert got["count"] == row["count"]


def test_fairlearn_parity_multiclass_one_vs_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, c = 600, 3
    y, pred = _random_case(rng, n, c)
    grp = rng.integers(0, 4, n)
    pred = np.where((grp == 3) & (rng.random(n) < 0.4), 2, pred)
    res = _audit(tmp_path, logits_for(pred, c), y, {"site": grp}, c)
    m = res.metrics("bias.group_metrics")
    assert m["mode"] == "one-vs-rest"
    rows = {k: _fairlearn_row((y == k).astype(int), (pred == k).astype(int), grp) for k in range(c)}
    for k in range(c):
        for name, v in rows[k].items():
            assert m["per_class"][str(k)][name] == pytest.approx(v, abs=1e-9), (k, name)
    # headline: the worst class
    for name in rows[0]:
        agg = min if name.endswith("ratio") else max
        assert m[name] == pytest.approx(agg(rows[k][name] for k in range(c)), abs=1e-9), name
    frame = fairlearn_metrics.MetricFrame(metrics=fairlearn_metrics.selection_rate, y_true=(y == 2).astype(int),
                                          y_pred=(pred == 2).astype(int), sensitive_features=grp)
    for g, v in frame.by_group.items():
        assert m["per_group"][str(g)]["selection_rate"]["2"] == pytest.approx(v, abs=1e-9)


def test_pure_functions_match_definitions() -> None:
    rng = np.random.default_rng(3)
    y, pred = _random_case(rng, 300, 4)
    codes = rng.integers(0, 3, 300)
    pred[:5] = -1  # no prediction: wrong, selects nothing
    r = group_rates(group_counts(y, pred, codes, 3, 4))
    for g in range(3):
        sel = codes == g
        assert r["accuracy"][g] == pytest.approx(np.mean(pred[sel] == y[sel]))
        for k in range(4):
            yk, pk = y[sel] == k, pred[sel] == k
            assert r["selection_rate"][g, k] == pytest.approx(pk.mean())
            assert r["tpr"][g, k] == pytest.approx((yk & pk).sum() / yk.sum())
            assert r["fpr"][g, k] == pytest.approx((~yk & pk).sum() / (~yk).sum())
    d = disparities(r)
    assert d["accuracy_difference"] == pytest.approx(r["accuracy"].max() - r["accuracy"].min())


def test_calibration_error_per_group_matches_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    n, c = 400, 3
    probs = rng.dirichlet(np.ones(c) * 0.7, n)
    y = np.array([rng.choice(c, p=p) for p in probs])
    grp = rng.choice(np.array(["a", "b"]), n)
    res = _audit(tmp_path, np.log(probs).astype(np.float32), y, {"g": grp}, c, {"ece_bins": 10})
    m = res.metrics("bias.group_metrics")
    # the model computes softmax(log p) = p in float32
    p32 = np.exp(np.log(probs).astype(np.float32).astype(np.float64))
    p32 /= p32.sum(axis=1, keepdims=True)
    for g in ("a", "b"):
        sel = grp == g
        conf, hit = p32[sel].max(1), (p32[sel].argmax(1) == y[sel])
        ece = 0.0
        for lo in np.arange(10) / 10:  # reference: explicit loop over (lo, hi] bins
            inb = (conf > lo) & (conf <= lo + 0.1) if lo > 0 else (conf <= 0.1)
            if inb.any():
                ece += inb.sum() / sel.sum() * abs(hit[inb].mean() - conf[inb].mean())
        assert m["per_group"][g]["calibration_error"] == pytest.approx(ece, abs=1e-5)


def test_bootstrap_intervals_match_scipy(tmp_path: Path) -> None:
    from scipy import stats

    rng = np.random.default_rng(5)
    n = 600
    grp = np.where(rng.random(n) < 0.5, 0, 1)
    y = rng.integers(0, 2, n)
    right = rng.random(n) < np.where(grp == 0, 0.9, 0.7)
    pred = np.where(right, y, 1 - y)
    B = 3000
    res = _audit(tmp_path, logits_for(pred, 2), y, {"g": grp}, 2, {"bootstrap": B, "confidence": 0.9})
    m = res.metrics("bias.group_metrics")
    c0, c1 = right[grp == 0].astype(float), right[grp == 1].astype(float)
    ref = stats.bootstrap((c0, c1), lambda a, b, axis: np.abs(a.mean(axis) - b.mean(axis)), vectorized=True,
                          n_resamples=20000, method="percentile", confidence_level=0.9,
                          rng=np.random.default_rng(0))
    lo, hi = m["ci"]["accuracy_difference"]
    # Monte-Carlo error of a percentile with B = 3000 is ~0.003 here
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.012)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.012)
    assert lo <= m["accuracy_difference"] <= hi
    ref0 = stats.bootstrap((c0,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.9,
                           rng=np.random.default_rng(0))
    glo, ghi = m["per_group"]["0"]["accuracy_ci"]
    assert glo == pytest.approx(ref0.confidence_interval.low, abs=0.012)
    assert ghi == pytest.approx(ref0.confidence_interval.high, abs=0.012)
    sel0, sel1 = pred[grp == 0].astype(float), pred[grp == 1].astype(float)
    ref_dp = stats.bootstrap((sel0, sel1), lambda a, b, axis: np.abs(a.mean(axis) - b.mean(axis)),
                             vectorized=True, n_resamples=20000, method="percentile", confidence_level=0.9,
                             rng=np.random.default_rng(0))
    dlo, dhi = m["ci"]["demographic_parity_difference"]
    assert dlo == pytest.approx(ref_dp.confidence_interval.low, abs=0.012)
    assert dhi == pytest.approx(ref_dp.confidence_interval.high, abs=0.012)
    # seeded: the same spec gives the same intervals
    again = _audit(tmp_path, logits_for(pred, 2), y, {"g": grp}, 2, {"bootstrap": B, "confidence": 0.9})
    assert again.metrics("bias.group_metrics")["ci"] == m["ci"]


def test_bootstrap_degenerate_when_groups_are_uniform(tmp_path: Path) -> None:
    # every row of group a right, every row of group b wrong: each replicate has the same accuracies
    y = np.zeros(40, int)
    grp = np.array(["a"] * 20 + ["b"] * 20)
    pred = np.where(grp == "a", 0, 1)
    m = _audit(tmp_path, logits_for(pred, 2), y, {"g": grp}, 2, {"bootstrap": 50, "min_group_size": 1}).metrics(
        "bias.group_metrics")
    assert m["ci"]["accuracy_difference"] == [1.0, 1.0]
    assert m["ci"]["worst_group_accuracy"] == [0.0, 0.0]


def test_missing_and_small_groups_from_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    n = 120
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    x = logits_for(pred, 2)
    grp = np.array(["north"] * 60 + ["south"] * 50 + ["tiny"] * 5 + [""] * 5, dtype=object)
    lines = ["l0,l1,y,region"] + [f"{a},{b},{t},{g}" for (a, b), t, g in zip(x, y, grp)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    model = identity_model(tmp_path / "m.onnx", 2)
    spec = {"model": {"path": str(model)},
            "data": {"path": str(tmp_path / "d.csv"), "y": "y", "groups": ["region"]},
            "checks": [{"use": "bias.group_metrics", "with": {"bootstrap": 20}}]}
    res = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False)
    res.assert_status("bias.group_metrics", "warn")  # the small group is flagged, not hidden
    m = res.metrics("bias.group_metrics")
    assert m["missing_group_rows"] == 5
    assert m["n"] == 115
    assert m["small_groups"] == ["tiny"]
    assert m["per_group"]["tiny"]["count"] == 5 and m["per_group"]["tiny"]["small"] is True
    sel = grp == "tiny"
    assert m["per_group"]["tiny"]["accuracy"] == pytest.approx(np.mean(pred[sel] == y[sel]))
    msgs = [f.message for f in res.check("bias.group_metrics").findings]
    assert any("tiny" in s for s in msgs) and any("5 rows have no value" in s for s in msgs)


def test_cli_run_with_gate_fails_on_disparity(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditor.cli import main

    y = np.array([1, 1, 0, 0] * 10)
    pred = np.array([1, 0, 0, 0] * 5 + [1, 1, 1, 0] * 5)  # selection rate 1/4 vs 3/4
    g = np.array(["A"] * 20 + ["B"] * 20)
    model = identity_model(tmp_path / "m.onnx", 2)
    np.savez(tmp_path / "d.npz", x=logits_for(pred, 2), y=y, sex=g)
    spec = write_spec(tmp_path / "spec.yaml", {
        "model": {"path": str(model)}, "data": {"path": str(tmp_path / "d.npz"), "groups": ["sex"]},
        "checks": [{"use": "bias.group_metrics", "with": {"bootstrap": 0, "min_group_size": 5},
                    "gate": {"demographic_parity_difference": {"max": 0.1}}}],
        "report": {"dir": str(tmp_path / "rep"), "formats": ["json"]}})
    # the installed `bias` entry point, other built-in plugins switched off (they are developed alongside)
    others = [a for p in ("performance", "robustness", "sparsity", "transfer", "torch") for a in ("--disable", p)]
    out = CliRunner().invoke(main, ["run", str(spec), "-q", *others])
    assert out.exit_code == 1, out.output
    doc = json.loads(next((tmp_path / "rep").glob("*.json")).read_text())
    chk = doc["checks"][0]
    assert chk["status"] == "fail"
    assert chk["metrics"]["demographic_parity_difference"] == pytest.approx(0.5)


def test_parquet_string_and_integer_groups_with_nulls(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(7)
    n = 150
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.75, y, 1 - y)
    x = logits_for(pred, 2)
    region = rng.choice(np.array(["east", "west"]), n).astype(object)
    region[:4] = None
    band = rng.integers(1, 3, n)
    pq.write_table(pa.table({"l0": x[:, 0], "l1": x[:, 1], "y": y, "region": list(region), "band": band}),
                   tmp_path / "d.parquet")
    model = identity_model(tmp_path / "m.onnx", 2)
    spec = {"model": {"path": str(model)},
            "data": {"path": str(tmp_path / "d.parquet"), "y": "y", "groups": ["region", "band"]},
            "checks": [{"use": "bias.group_metrics", "with": {"bootstrap": 0, "min_group_size": 1}}]}
    m = run_audit(spec, workdir=tmp_path, plugins=[auditor_bias], entry_points=False).metrics("bias.group_metrics")
    assert m["missing_group_rows"] == 4 and m["n"] == n - 4
    assert m["group_columns"] == ["region", "band"]
    for r in ("east", "west"):
        for b in (1, 2):
            sel = (region == r) & (band == b)
            got = m["per_group"][f"region={r}, band={b}"]
            assert got["count"] == int(sel.sum())
            assert got["accuracy"] == pytest.approx(np.mean(pred[sel] == y[sel]))


def test_unknown_labels_and_worst_group(tmp_path: Path) -> None:
    y = np.array([0, 1, 0, 1, 5, 0, 1, 1, 0, 5])  # 5 is not a class of the 2-class model
    pred = np.array([0, 1, 0, 0, 0, 1, 1, 0, 0, 1])
    g = np.array(["a"] * 5 + ["b"] * 5)
    m = _audit(tmp_path, logits_for(pred, 2), y, {"g": g}, 2, {"min_group_size": 1}).metrics("bias.group_metrics")
    assert m["unknown_label_rows"] == 2 and m["n"] == 8
    # a: 3 of 4 right; b: 2 of 4 right
    assert m["per_group"]["a"]["accuracy"] == 0.75 and m["per_group"]["b"]["accuracy"] == 0.5
    assert m["worst_group"] == "b" and m["worst_group_accuracy"] == 0.5


def test_labels_unknown_to_the_model_skip(tmp_path: Path) -> None:
    y = np.array([7, 8, 7, 8])  # none of the 2-class model's classes (0, 1)
    res = _audit(tmp_path, logits_for(np.array([0, 1, 0, 1]), 2), y, {"g": np.array([0, 0, 1, 1])}, 2)
    res.assert_status("bias.group_metrics", "skipped")
