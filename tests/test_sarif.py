"""SARIF 2.1.0 (``--format sarif``): valid against the OASIS schema shipped in the package; one result per failed or
warned gate, per warn/fail finding and per errored check, each at the line of its check's ``use:``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from builders import blobs, mlp_weights, write_mlp
from click.testing import CliRunner

from auditor.cli import main
from auditor.report.sarif import SCHEMA_FILE, SarifReporter
from auditor.results import AuditReport


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sarif")
    w = mlp_weights()
    write_mlp(tmp / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y)
    spec = tmp / "audit.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": "m.onnx"}, "data": {"path": "d.npz"},
                                    "checks": [
        {"use": "performance.metrics", "gate": {"accuracy": {"min": 0.999}, "ece": {"max": 1.0}}},
        {"use": "fake.const", "name": "warns", "with": {"metrics": {"s": 0.5}, "finding": "warn"},
         "gate": {"s": {"min": 0.9, "severity": "warn"}}},
        {"use": "fake.const", "name": "fails", "with": {"metrics": {"s": 0.5}, "finding": "fail"}},
        {"use": "fake.const", "name": "quiet", "with": {"metrics": {"s": 0.5}, "finding": "info"}},
        {"use": "fake.crash"},
    ], "report": {"dir": "r", "formats": ["json", "sarif"]}}, sort_keys=False))
    r = CliRunner().invoke(main, ["run", str(spec), "-p", "fake_plugin", "-q"])
    assert r.exit_code == 1, r.output
    sarif = json.loads((tmp / "r" / "report.sarif").read_text())
    report = json.loads((tmp / "r" / "report.json").read_text())
    return spec, sarif, report


def test_valid_against_the_sarif_2_1_0_schema(audited: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    _, sarif, _ = audited
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    jsonschema.Draft4Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(sarif), key=str)
    assert errors == []
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    # a broken log is caught by the same validation (the test can fail)
    bad = json.loads(json.dumps(sarif))
    bad["runs"][0]["results"][0]["level"] = "catastrophic"
    assert list(jsonschema.Draft4Validator(schema).iter_errors(bad))


def test_one_result_per_problem_at_the_line_of_use(audited: tuple[Path, dict[str, Any], dict[str, Any]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec, sarif, report = audited
    run = sarif["runs"][0]
    got = [(r["ruleId"], r["level"]) for r in run["results"]]
    assert got == [
        ("auditor/performance.metrics/accuracy", "error"),  # failed gate; the ece gate held: no result
        ("auditor/warns/s", "warning"),  # warned gate
        ("auditor/warns/finding", "warning"),
        ("auditor/fails/finding", "error"),
        ("auditor/fake.crash/error", "error"),  # a crashed check; the info finding of `quiet` is not a result
    ]
    lines = spec.read_text().splitlines()
    checks = {c["id"]: c for c in report["checks"]}
    for r in run["results"]:
        check = r["ruleId"].split("/")[1]
        loc = r["locations"][0]["physicalLocation"]
        line = loc["region"]["startLine"]
        assert line == checks[check]["spec_line"]
        assert lines[line - 1].lstrip(" -").startswith(f"use: {checks[check]['use']}")
        assert loc["artifactLocation"]["uri"] == spec.resolve().as_uri()  # the test runs outside tmp
        assert run["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    acc = checks["performance.metrics"]["metrics"]["accuracy"]
    first = run["results"][0]
    assert first["message"]["text"] == f"performance.metrics: accuracy = {acc:.6g} (min 0.999)"
    assert first["properties"]["value"] == acc and first["properties"]["threshold"] == 0.999
    assert run["properties"]["gating"] == report["gating"]
    # relative to the working folder when the spec is inside it (code scanning resolves against the repo root)
    monkeypatch.chdir(spec.parent)
    again = json.loads(SarifReporter().render(AuditReport.from_dict(report)))
    assert again["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "audit.yaml"
