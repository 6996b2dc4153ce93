"""``auditor diff``: metric deltas (checked against scikit-learn on both models), added/removed checks and
metrics, gate flips, exit codes, the three output formats."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from builders import blobs, mlp_numpy, mlp_weights, write_mlp
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, recall_score

from auditor.cli import main
from auditor.diff import diff_reports, flatten, render


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same spec run on a model and on a degraded copy (noise on its weights), written as report.json."""
    tmp = tmp_path_factory.mktemp("diff")
    w = mlp_weights()
    rng = np.random.default_rng(3)
    worse = {k: (v + rng.normal(0, 0.8, v.shape)).astype(np.float32) for k, v in w.items()}
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y)
    acc_good = float(accuracy_score(y, mlp_numpy(x, w).argmax(1)))
    acc_bad = float(accuracy_score(y, mlp_numpy(x, worse).argmax(1)))
    assert acc_bad < acc_good
    threshold = round((acc_good + acc_bad) / 2, 4)
    out = {"x": x, "y": y, "w": w, "worse": worse, "acc": (acc_good, acc_bad), "threshold": threshold}
    for name, weights in (("old", w), ("new", worse)):
        model = write_mlp(tmp / f"{name}.onnx", weights)
        spec = tmp / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({
            "version": 1, "model": {"path": str(model)}, "data": {"path": str(tmp / "d.npz"), "y": "y"},
            "checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": threshold},
                                                               "ece": {"max": 1.0}}}],
            "report": {"dir": str(tmp / name), "formats": ["json"]}}))
        r = CliRunner().invoke(main, ["run", str(spec), "-q"])
        assert r.exit_code in (0, 1), r.output
        out[name] = tmp / name / "report.json"
    return out


def test_deltas_match_scikit_learn_and_the_gate_regresses(two_reports: dict[str, Any]) -> None:
    t = two_reports
    old, new = json.loads(t["old"].read_text()), json.loads(t["new"].read_text())
    d = diff_reports(old, new)
    (c,) = d.checks
    changes = {x.metric: x for x in c.changes}
    acc_good, acc_bad = t["acc"]
    assert changes["accuracy"].old == pytest.approx(acc_good) and changes["accuracy"].new == pytest.approx(acc_bad)
    assert changes["accuracy"].delta == pytest.approx(acc_bad - acc_good)
    assert changes["accuracy"].relative == pytest.approx((acc_bad - acc_good) / acc_good)
    # Per-class recall, addressed the way gates address it (per_class_recall.<class>).
    x, y = t["x"], t["y"]
    r_old = recall_score(y, mlp_numpy(x, t["w"]).argmax(1), average=None, labels=[0, 1, 2, 3])
    r_new = recall_score(y, mlp_numpy(x, t["worse"]).argmax(1), average=None, labels=[0, 1, 2, 3])
    for k in range(4):
        ch = changes.get(f"per_class_recall.{k}")
        if r_old[k] == r_new[k]:
            assert ch is None
        else:
            assert ch is not None and ch.delta == pytest.approx(r_new[k] - r_old[k])
    # Unchanged + changed covers every leaf of NEW's metrics exactly once.
    assert c.unchanged + sum(x.kind == "changed" for x in c.changes) == len(flatten(new["checks"][0]["metrics"]))
    (flip,) = d.gate_flips
    assert (flip.metric, flip.op, flip.old_status, flip.new_status) == ("accuracy", "min", "pass", "fail")
    assert flip.regressed and d.regressions == [flip]
    assert d.model_changed  # different weights: different file contents


def test_cli_exit_codes_and_formats(two_reports: dict[str, Any]) -> None:
    t = two_reports
    r = CliRunner().invoke(main, ["diff", str(t["old"]), str(t["new"])])
    assert r.exit_code == 1, r.output
    assert f"performance.metrics: accuracy min {t['threshold']:g}: pass -> fail" in r.stdout
    assert "[REGRESSED]" in r.stdout and r.stdout.rstrip().endswith("1 gate(s) regressed")
    back = CliRunner().invoke(main, ["diff", str(t["new"]), str(t["old"])])
    assert back.exit_code == 0 and "[fixed]" in back.stdout  # fail -> pass is not a regression
    same = CliRunner().invoke(main, ["diff", str(t["old"]), str(t["old"])])
    assert same.exit_code == 0 and "no gate changed status" in same.stdout and "unchanged: performance.metrics" \
        in same.stdout
    js = CliRunner().invoke(main, ["diff", str(t["old"]), str(t["new"]), "--format", "json"])
    doc = json.loads(js.stdout)
    assert js.exit_code == 1 and doc["regressed"] is True and doc["gate_flips"][0]["regressed"] is True
    acc = next(c for c in doc["checks"][0]["changes"] if c["metric"] == "accuracy")
    assert acc["delta"] == pytest.approx(t["acc"][1] - t["acc"][0])
    md = CliRunner().invoke(main, ["diff", str(t["old"]), str(t["new"]), "--format", "markdown", "--max-rows", "2"])
    assert md.stdout.startswith("## Audit diff: ❌ gates regressed")
    assert "| `performance.metrics` | `accuracy` min" in md.stdout and "**regressed**" in md.stdout
    rows = [ln for ln in md.stdout.splitlines() if ln.startswith("| `") and "→" not in ln and "min" not in ln]
    assert len(rows) == 2 and "more |" in md.stdout  # --max-rows


def _report(checks: list[dict[str, Any]], status: str = "pass") -> dict[str, Any]:
    return {"schema": 1, "status": status, "model": {"path": "m.onnx", "sha256": "a"}, "checks": checks}


def _check(cid: str, metrics: dict[str, Any], gates: list[dict[str, Any]] | None = None, status: str = "pass",
           **kw: Any) -> dict[str, Any]:
    return {"id": cid, "use": cid, "status": status, "metrics": metrics, "gates": gates or [], **kw}


def _gate(metric: str, status: str, value: float | None, op: str = "min", threshold: float = 0.5) -> dict[str, Any]:
    return {"metric": metric, "op": op, "threshold": threshold, "value": value, "status": status}


def test_added_removed_tolerance_nan_and_lists() -> None:
    old = _report([
        _check("a", {"x": 1.0, "gone": 2, "nan": "nan", "curve": [{"s": 0.1, "acc": 0.9}, {"s": 0.2, "acc": 0.8}],
                     "name": "fc1", "flag": True}),
        _check("removed", {"y": 1})])
    new = _report([
        _check("a", {"x": 1.0005, "nan": "nan", "curve": [{"s": 0.1, "acc": 0.9}, {"s": 0.2, "acc": 0.7}],
                     "name": "fc2", "flag": False, "fresh": [1, 2]}),
        _check("added", {"z": 1})])
    d = diff_reports(old, new)
    assert d.added_checks == ["added"] and d.removed_checks == ["removed"]
    ch = {c.metric: c for c in d.checks[0].changes}
    assert set(ch) == {"x", "curve.1.acc", "name", "flag", "fresh.0", "fresh.1", "gone"}
    assert ch["curve.1.acc"].delta == pytest.approx(-0.1) and ch["x"].delta == pytest.approx(0.0005)
    assert ch["gone"].kind == "removed" and ch["fresh.0"].kind == "added" and ch["name"].delta is None
    assert ch["flag"].old is True and ch["flag"].delta is None  # booleans are not numbers
    assert d.checks[0].unchanged == 4  # nan == nan, curve.0.s, curve.0.acc, curve.1.s
    tol = diff_reports(old, new, tolerance=0.001)
    assert "x" not in {c.metric for c in tol.checks[0].changes}
    assert "curve.1.acc" in {c.metric for c in tol.checks[0].changes}
    text = render(d, "text")
    assert "checks added: added" in text and "checks removed: removed" in text
    assert re.search(r"curve\.1\.acc +0\.8 -> 0\.7 \(-0\.1, -12\.5%\)", text)


def test_gates_flip_through_errors_skips_and_threshold_changes() -> None:
    old = _report([
        _check("crashes", {"a": 0.9}, [_gate("a", "pass", 0.9)]),
        _check("skips", {"b": 0.9}, [_gate("b", "pass", 0.9)]),
        _check("stricter", {"c": 0.9}, [_gate("c", "pass", 0.9, threshold=0.5)]),
        _check("warns", {"d": 0.4}, [_gate("d", "warn", 0.4)]),
        _check("regate", {"e": 0.9}, [_gate("e", "pass", 0.9)])])
    new = _report([
        _check("crashes", {}, [], status="error", error="ValueError: x"),
        _check("skips", {}, [_gate("b", "fail", None)], status="skipped"),
        _check("stricter", {"c": 0.9}, [_gate("c", "fail", 0.9, threshold=0.95)], status="fail"),
        _check("warns", {"d": 0.6}, [_gate("d", "pass", 0.6)]),
        _check("regate", {"e": 0.9}, [_gate("e", "pass", 0.9, op="max", threshold=1)])], status="error")
    d = diff_reports(old, new)
    flips = {g.check: g for g in d.gate_flips}
    assert flips["crashes"].new_status == "error" and flips["crashes"].regressed
    assert flips["skips"].regressed and flips["stricter"].regressed
    assert not flips["warns"].regressed  # warn -> pass
    assert "regate" not in flips
    regate = next(c for c in d.checks if c.id == "regate")
    assert regate.gates_added == ["e max"] and regate.gates_removed == ["e min"]
    text = render(d, "text")
    assert "stricter: c min 0.5 -> 0.95: pass -> fail (value 0.9 -> 0.9) [REGRESSED]" in text
    assert "3 gate(s) regressed" in text
    md = render(d, "markdown")
    assert "`c` min 0.5 → 0.95" in md


def test_markdown_cells_are_escaped() -> None:
    old = _report([_check("a|b", {"label": "x|y"})])
    new = _report([_check("a|b", {"label": "x|z"})])
    md = render(diff_reports(old, new), "markdown")
    row = next(ln for ln in md.splitlines() if ln.startswith("| `label`"))
    assert row == "| `label` | x\\|y | x\\|z |  |"


@pytest.mark.parametrize("content,needle", [
    (None, "report not found"),
    ("{not json", "not JSON"),
    ('{"a": 1}', "not an auditor JSON report"),
    ('{"schema": 2, "status": "pass", "checks": []}', "report schema 2 is not supported"),
])
def test_unreadable_reports_exit_2_with_one_line(tmp_path: Path, content: str | None, needle: str) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report([])))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    r = CliRunner().invoke(main, ["diff", str(bad), str(good)])
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_nonfinite_values_compare() -> None:
    d = diff_reports(_report([_check("a", {"v": "inf", "w": 1.0})]), _report([_check("a", {"v": "inf", "w": "nan"})]))
    (c,) = d.checks[0].changes
    assert c.metric == "w" and c.delta is None and c.new == "nan"
    assert math.isnan(float(c.new))
    assert d.to_dict()["checks"][0]["unchanged"] == 1
