"""The runner: isolation of checks, timeouts, Ctrl-C, gates, baselines, seeds."""

from __future__ import annotations

from pathlib import Path

import fake_plugin
import pytest

from auditor.results import AuditReport, Status
from auditor.runner import evaluate_gates, lookup_metric
from auditor.spec import GateSpec
from auditor.testing import run_audit


def audit(tmp_path: Path, mlp: tuple[Path, Path, object], checks: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    model, data, _ = mlp
    return run_audit({"checks": checks, **extra}, model=model, data=data, plugins=[fake_plugin], workdir=tmp_path)


def test_a_crashing_check_is_an_error_and_the_others_still_run(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    r = audit(tmp_path, mlp, [{"use": "fake.crash"}, {"use": "performance.metrics"}])
    r.assert_status("fake.crash", "error").assert_status("performance.metrics", "info")
    assert r.check("fake.crash").error == "RuntimeError: boom"
    assert "Traceback" in r.check("fake.crash").artifacts["traceback"]
    assert r.exit_code == 1 and r.doc["status"] == "error"


def test_a_hanging_check_times_out(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    r = audit(tmp_path, mlp, [{"use": "fake.hang", "timeout_s": 0.5}, {"use": "fake.const"}])
    r.assert_status("fake.hang", "error").assert_status("fake.const", "info")
    assert "timed out after 0.5 s" in (r.check("fake.hang").error or "")


def test_ctrl_c_gives_a_partial_report_marked_interrupted(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    r = audit(tmp_path, mlp, [{"use": "fake.const"}, {"use": "fake.interrupt"}, {"use": "performance.metrics"}])
    assert r.error == "interrupted" and r.exit_code == 130
    doc = r.doc
    assert doc["interrupted"] is True
    assert [c["status"] for c in doc["checks"]] == ["info", "error", "skipped"]
    assert doc["checks"][2]["skip_reason"] == "not run: interrupted"


def test_gates_min_max_warn_and_missing_metrics() -> None:
    gates = [GateSpec("acc", {"min": 0.9}), GateSpec("loss", {"max": 0.5}, "warn"), GateSpec("nope", {"min": 1})]
    res = evaluate_gates(gates, {"acc": 0.95, "loss": 0.7}, None)
    assert [g.status for g in res] == [Status.PASS, Status.WARN, Status.FAIL]
    assert "not reported as a number (reported: acc, loss)" in res[2].message
    nan = evaluate_gates([GateSpec("acc", {"min": 0.0})], {"acc": float("nan")}, None)
    assert nan[0].status is Status.FAIL


def test_gate_on_nested_metric_paths() -> None:
    m = {"per_class_recall": {"3": 0.5}, "curve": [{"accuracy": 0.9}, {"accuracy": 0.4}]}
    assert lookup_metric(m, "per_class_recall.3") == 0.5
    assert lookup_metric(m, "curve.-1.accuracy") == 0.4
    res = evaluate_gates([GateSpec("curve.1.accuracy", {"min": 0.5})], m, None)
    assert res[0].status is Status.FAIL


def test_baseline_delta_gates(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = mlp
    checks = [
        {"use": "fake.const", "name": "drop", "with": {"metrics": {"acc": 0.90}, "baseline_offset": 0.05},
         "gate": {"acc": {"max_drop": 0.02}}},
        {"use": "fake.const", "name": "ok", "with": {"metrics": {"acc": 0.90}, "baseline_offset": 0.01},
         "gate": {"acc": {"max_drop": 0.02}}},
        {"use": "fake.const", "name": "rise", "with": {"metrics": {"loss": 0.5}, "baseline_offset": -0.2},
         "gate": {"loss": {"max_increase": 0.1, "severity": "warn"}}},
    ]
    r = audit(tmp_path, mlp, checks, baseline={"path": str(model)})
    r.assert_status("drop", "fail").assert_status("ok", "pass").assert_status("rise", "warn")
    g = r.check("drop").gates[0]
    assert g.baseline == pytest.approx(0.95) and g.value == pytest.approx(0.90)
    assert r.check("drop").baseline_metrics == {"acc": pytest.approx(0.95)}


def test_findings_and_skips_set_status_and_skipped_gates_never_pass(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    r = audit(tmp_path, mlp, [
        {"use": "fake.const", "name": "w", "with": {"finding": "warn"}},
        {"use": "fake.const", "name": "f", "with": {"finding": "fail"}},
        {"use": "fake.const", "name": "s", "with": {"skip": True}},
        {"use": "fake.const", "name": "sg", "with": {"skip": True}, "gate": {"x": {"min": 1}}},
    ])
    r.assert_status("w", "warn").assert_status("f", "fail").assert_status("s", "skipped")
    assert r.check("sg").gates[0].status is Status.FAIL
    assert r.doc["status"] == "fail"


def test_seeds_make_runs_identical_and_independent_of_order(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    a = audit(tmp_path, mlp, [{"use": "fake.draw", "name": "a"}, {"use": "fake.draw", "name": "b"}], seed=3)
    b = audit(tmp_path, mlp, [{"use": "fake.draw", "name": "b"}, {"use": "fake.draw", "name": "a"}], seed=3)
    c = audit(tmp_path, mlp, [{"use": "fake.draw", "name": "a"}], seed=4)
    assert a.metrics("a") == b.metrics("a") and a.metrics("b") == b.metrics("b")
    assert a.metrics("a") != a.metrics("b") and a.metrics("a") != c.metrics("a")


def test_weights_only_audit_opens_no_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model ONNX Runtime cannot run (custom op) still gets its weights audited; no session is opened."""
    import numpy as np
    from builders import FLOAT, save_model
    from onnx import helper

    path = save_model([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Fancy", ["z"], ["y"],
                                                                                           domain="com.acme")],
                      [helper.make_tensor_value_info("x", FLOAT, ["N", 2])],
                      [helper.make_tensor_value_info("y", FLOAT, ["N", 2])], {"W": np.eye(2, dtype=np.float32)},
                      tmp_path / "custom.onnx", extra_opsets=[("com.acme", 1)])
    r = run_audit({"checks": [{"use": "fake.const", "with": {"metrics": {"a": 1}}}]}, model=path,
                  plugins=[fake_plugin], workdir=tmp_path)
    r.assert_status("fake.const", "info")
    assert "weights-only audit" in r.doc["model"]["notes"][0]


def test_junit_and_markdown_for_skipped_gates_and_odd_messages(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    import xml.etree.ElementTree as ET

    from auditor.report.junit import JUnitReporter
    from auditor.report.markdown import MarkdownReporter

    r = audit(tmp_path, mlp, [{"use": "fake.const", "name": "sg", "with": {"skip": True}, "gate": {"x": {"min": 1}}},
                              {"use": "fake.crash"}])
    doc = r.doc
    doc["checks"][1]["error"] = "RuntimeError: a | b\nsecond line"
    root = ET.fromstring(JUnitReporter().render(AuditReport.from_dict(doc)).split("\n", 1)[1])
    assert root.get("failures") == "1" and root.get("errors") == "1" and root.get("skipped") == "0"
    md = MarkdownReporter().render(AuditReport.from_dict(doc))
    row = next(line for line in md.splitlines() if line.startswith("| `fake.crash`"))
    assert "a \\| b second line" in row and row.count(" | ") == 3


def test_every_model_call_of_a_check_reports_batches(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    from auditor.plugins import build_registry
    from auditor.runner import Runner, load_inputs
    from auditor.spec import parse_spec

    model, data, _ = mlp
    reg = build_registry(extra_plugins=[fake_plugin])
    doc = {"version": 1, "model": {"path": str(model)}, "data": {"path": str(data), "batch_size": 64},
           "checks": [{"use": "fake.hang", "timeout_s": 0.3}]}
    spec = parse_spec(tmp_path / "s.yaml", reg.checks, sorted(reg.reporters), doc=doc)
    seen: list[tuple[int, int | None]] = []

    class Recorder:
        def message(self, text: str) -> None: ...
        def check_started(self, index: int, total: int, check_id: str) -> None: ...
        def check_finished(self, report: object) -> None: ...
        def check_progress(self, check_id: str, done: int, total: int | None, what: str) -> None:
            seen.append((done, total))

    Runner(spec, reg, Recorder()).run(load_inputs(spec))  # type: ignore[arg-type]
    assert seen and seen[0] == (8, 8)  # fake.hang predicts 8 rows at a time through ctx.model directly


def test_gate_paths_reach_keys_with_dots() -> None:
    m = {"per_layer": {"conv1.weight": {"sparsity": 0.5}, "conv1": {"weight": 1}}, "a.b": 3}
    assert lookup_metric(m, "per_layer.conv1.weight.sparsity") == 0.5
    assert lookup_metric(m, "per_layer.conv1.weight") == {"sparsity": 0.5}
    assert lookup_metric(m, "a.b") == 3
    with pytest.raises(KeyError):
        lookup_metric(m, "per_layer.conv2.weight")


def test_predict_proba_does_not_run_the_whole_data_set_first(tmp_path, mlp) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from builders import mlp_numpy

    from auditor.context import AuditContext
    from auditor.data import Dataset
    from auditor.model import ModelConfig, ModelHandle

    model, _, w = mlp
    m = ModelHandle(ModelConfig(path=model, device="cpu"))
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    ds = Dataset(x=x, y=np.zeros(50, np.int64), groups={}, columns={}, source="d")
    ctx = AuditContext(check_id="c", params={}, model=m, data=ds, seed=0, rng=np.random.default_rng(0))
    p = ctx.predict_proba(x[:5])
    assert ctx.cache.predictions == {}
    np.testing.assert_allclose(p, mlp_numpy(x[:5], w), rtol=1e-4, atol=1e-5)
