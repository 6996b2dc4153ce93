"""The typed report (AuditReport/CheckReport) every format, ``auditor diff`` and the render hook receive; the one
JSON encoder (non-finite -> null) and the one metrics module (dotted look-up, leaves, display rows, formatting)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fake_plugin
import numpy as np
import pytest
import yaml

from auditor.diff import diff_reports, load_report
from auditor.jsonenc import dumps, json_number, jsonable, number_or_none
from auditor.metrics import format_value, get, leaves, lookup, number, scalars
from auditor.plugins import build_registry, hookimpl
from auditor.report.html import HtmlReporter
from auditor.report.json_report import JsonReporter
from auditor.results import AuditReport, CheckReport, Status
from auditor.testing import run_audit


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    from builders import blobs, mlp_weights, write_mlp

    tmp = tmp_path_factory.mktemp("typed")
    w = mlp_weights()
    write_mlp(tmp / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y)
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": "m.onnx"}, "data": {"path": "d.npz"},
                                    "checks": [
        {"use": "performance.metrics", "gate": {"accuracy": {"min": 0.5}}},
        {"use": "fake.const", "name": "odd", "with": {"metrics": {"nan": float("nan"), "inf": float("inf"),
                                                                  "conv1.weight": {"zeros": 3}}},
         "gate": {"nan": {"min": 0}}},
        {"use": "fake.crash"},
    ]}, sort_keys=False))
    res = run_audit(spec, plugins=[fake_plugin])
    assert res.report is not None, res.error
    return res.report


def test_json_round_trip_is_exact(report: AuditReport, tmp_path: Path) -> None:
    text = JsonReporter().render(report)
    doc = json.loads(text)
    back = AuditReport.from_json(text)
    assert back.to_dict() == doc
    assert JsonReporter().render(back) == text
    (tmp_path / "report.json").write_text(text)
    assert AuditReport.from_json(tmp_path / "report.json").to_dict() == doc
    assert load_report(tmp_path / "report.json").to_dict() == doc
    # typed all the way down
    odd = back.check("odd")
    assert isinstance(odd, CheckReport) and odd.status is Status.FAIL and odd.gates[0].status is Status.FAIL
    assert back.check("fake.crash").error == "RuntimeError: boom"
    assert back.metrics("performance.metrics")["accuracy"] == report.metrics("performance.metrics")["accuracy"]


def test_unknown_keys_survive_a_round_trip() -> None:
    doc = {"schema": 1, "status": "pass", "model": {"path": "m"}, "checks": [
        {"id": "a", "use": "x.a", "status": "pass", "metrics": {"v": 1}, "gates": [], "future_key": [1, 2]}],
        "written_by_a_newer_version": {"k": "v"}}
    r = AuditReport.from_dict(doc)
    assert r.extra == {"written_by_a_newer_version": {"k": "v"}}
    assert r.checks[0].extra == {"future_key": [1, 2]}
    out = r.to_dict()
    assert out["written_by_a_newer_version"] == {"k": "v"} and out["checks"][0]["future_key"] == [1, 2]
    with pytest.raises(ValueError, match="schema 2"):
        AuditReport.from_dict({**doc, "schema": 2})


def test_spec_line_of_each_check_is_in_the_report(report: AuditReport) -> None:
    text = Path(report.spec_path).read_text().splitlines()
    for c in report.checks:
        assert c.spec_line is not None and text[c.spec_line - 1].lstrip(" -").startswith(f"use: {c.use}")
    assert json.loads(report.to_json())["checks"][1]["spec_line"] == report.checks[1].spec_line


def test_one_nan_policy_nonfinite_is_null_and_the_file_is_strict_json(report: AuditReport) -> None:
    text = report.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    odd = json.loads(text)["checks"][1]
    assert odd["metrics"]["nan"] is None and odd["metrics"]["inf"] is None
    # the gate on the NaN metric failed, saying why; the gate's value is null too
    assert odd["gates"][0]["status"] == "fail" and odd["gates"][0]["message"] == "nan is NaN"
    assert odd["gates"][0]["value"] is None


def test_encoder_handles_numpy_enums_tuples_and_paths() -> None:
    value = {"a": np.float32(0.5), "b": np.arange(3), "c": (np.int64(2), float("-inf")), 4: Status.INFO,
             "d": np.array([[1.0, np.nan]]), "e": Path("x/y"), "f": np.bool_(True)}
    assert jsonable(value) == {"a": 0.5, "b": [0, 1, 2], "c": [2, None], "4": "info", "d": [[1.0, None]],
                               "e": "x/y", "f": True}
    assert json.loads(dumps(value)) == jsonable(value)


def test_number_or_none_is_a_float_or_none_for_missing_and_nan() -> None:
    assert number_or_none(np.float32(0.25)) == 0.25 and type(number_or_none(np.int64(3))) is float
    assert number_or_none(None) is None and number_or_none(np.median(np.array([np.nan]))) is None
    assert number_or_none(float("inf")) == float("inf")  # kept in memory; the report writes null
    # reports of earlier versions wrote non-finite floats as strings: still read as numbers
    assert math.isnan(json_number("nan")) and json_number("-inf") == -math.inf and json_number(None) is None
    assert json_number(True) is None and json_number(3) == 3.0


def test_metric_lookup_leaves_rows_and_formatting() -> None:
    m: dict[str, Any] = {"acc": 0.9, "per_class": {"3": 0.5}, "layers": {"conv1.weight": {"zeros": 0.25}},
                         "curve": [{"s": 0.1, "acc": 0.8}, {"s": 0.2, "acc": 0.4}], "short": [1, 2], "empty": {}}
    assert lookup(m, "layers.conv1.weight.zeros") == 0.25  # keys with dots
    assert lookup(m, "curve.-1.acc") == 0.4 and lookup(m, "per_class.3") == 0.5
    with pytest.raises(KeyError):
        lookup(m, "curve.2.acc")
    assert get(m, "nope", "d") == "d" and get(None, "acc") is None and number(m, "acc") == 0.9
    assert number(m, "curve") is None
    assert leaves(m) == {"acc": 0.9, "per_class.3": 0.5, "layers.conv1.weight.zeros": 0.25, "curve.0.s": 0.1,
                         "curve.0.acc": 0.8, "curve.1.s": 0.2, "curve.1.acc": 0.4, "short.0": 1, "short.1": 2,
                         "empty": {}}
    assert scalars(m) == [("acc", 0.9), ("per_class.3", 0.5), ("layers.conv1.weight.zeros", 0.25),
                          ("short", [1, 2])]
    assert scalars(m, max_depth=1, inline_lists=0) == [("acc", 0.9), ("per_class.3", 0.5)]
    assert format_value(0.123456) == "0.1235" and format_value(None) == "–" and format_value(True) == "true"
    assert format_value(list(range(100)), width=20) == "[0, 1, 2, 3, 4, 5, …"


def test_reporters_diff_and_render_hook_get_the_typed_report(report: AuditReport) -> None:
    seen: list[Any] = []

    class Typed:
        __name__ = "typed_renderer"

        @hookimpl
        def auditor_render_check(self, check: CheckReport, fmt: str) -> str | None:
            seen.append(check)
            if check.use != "performance.metrics":
                return None
            # the typed view and the dict view of earlier versions agree
            assert check["metrics"]["accuracy"] == check.metric("accuracy")
            return f'<p id="typed">{check.metric("accuracy"):.6f} {check.gates[0].status.value}</p>'

    page = HtmlReporter().render(report, build_registry(extra_plugins=[Typed()], use_entry_points=False).pm)
    acc = report.metrics("performance.metrics")["accuracy"]
    assert f'<p id="typed">{acc:.6f} pass</p>' in page
    assert all(isinstance(c, CheckReport) for c in seen) and len(seen) == 2  # the crashed check has no metrics
    d = diff_reports(report, AuditReport.from_json(report.to_json()))
    assert not d.gate_flips and all(not c.changes for c in d.checks)
