"""Plugins are untrusted code: a malformed result costs only its own check; reporters cannot replace a built-in
format, write outside the report folder, or take the other formats down with them."""

from __future__ import annotations

import json
from pathlib import Path

import bad_plugin
import fake_plugin
import pytest
from click.testing import CliRunner

from auditor.cli import main
from auditor.errors import PluginLoadError
from auditor.plugins import build_registry
from auditor.results import Finding, Severity
from auditor.runner import write_reports
from auditor.testing import run_audit, write_spec

HOWS = {
    "dict": "run() returned dict, not CheckResult",
    "none": "run() returned NoneType, not CheckResult",
    "metrics_list": "metrics is a list, not a mapping",
    "findings_str": "findings[0] is a str, not a Finding",
    "findings_none": "findings is a NoneType, not a list of Finding",
    "notes_none": "notes must be a list of strings, not NoneType",
    "self_ref": "metrics.me: contains itself",
    "int_keys": "metrics.per_class: key 0 is not a string",
    "object_value": "metrics.accuracy: object is not a JSON value",
    "set_value": "metrics.classes: set is not a JSON value",
    "deep": "nested deeper than 32 levels",
    "forged_severity": "findings[0].severity 'catastrophic' is not one of info, warn, fail",
}


def test_each_malformed_result_is_that_checks_error_and_every_report_is_written(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    model, data, _ = mlp
    checks = [{"use": "bad.malformed", "name": f"bad-{how}", "with": {"how": how}} for how in HOWS]
    checks += [{"use": "bad.malformed", "name": "bad-severity", "with": {"how": "bad_severity"}},
               {"use": "bad.malformed", "name": "bad-str", "with": {"how": "bad_str"}},
               {"use": "fake.const", "with": {"metrics": {"accuracy": 0.9}}, "gate": {"accuracy": {"min": 0.5}}}]
    r = run_audit({"checks": checks}, model=model, data=data, plugins=[fake_plugin, bad_plugin], workdir=tmp_path)
    for how, needle in HOWS.items():
        r.assert_status(f"bad-{how}", "error")
        assert needle in (r.check(f"bad-{how}").error or ""), (how, r.check(f"bad-{how}").error)
        assert "malformed result from Malformed.run()" in (r.check(f"bad-{how}").error or "")
    # An unknown severity fails where the plugin builds the Finding: never read as a pass.
    assert r.check("bad-severity").error == ("ValueError: Finding severity 'catastrophic' is not one of "
                                             "info, warn, fail")
    assert r.check("bad-str").error == "Nasty (its message could not be read)"
    r.assert_status("fake.const", "pass")
    assert r.exit_code == 1 and r.report is not None and r.report.status.value == "error"
    # Every format renders the report with the broken checks in it.
    registry = build_registry(extra_plugins=[fake_plugin])
    written = write_reports(r.report.to_dict(), tmp_path / "r", ["json", "markdown", "junit", "html"], registry)
    assert not written.failed and len(written) == 4
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [c["status"] for c in doc["checks"]].count("error") == len(HOWS) + 2


def test_severity_is_an_enum_validated_at_construction() -> None:
    assert Finding(message="m", severity="warn").severity is Severity.WARN
    assert Finding(message="m").to_dict() == {"message": "m", "severity": "info"}
    assert Finding(message="m", severity=Severity.FAIL).severity == "fail"  # a str enum: old comparisons hold
    with pytest.raises(ValueError, match="'warning' is not one of info, warn, fail"):
        Finding(message="m", severity="warning")
    with pytest.raises(TypeError, match="message must be a string"):
        Finding(message=3)  # type: ignore[arg-type]


def test_numpy_metrics_become_plain_json(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from auditor.results import plain_json

    got = plain_json({"a": np.float32(0.5), "b": np.arange(3), "c": (1, np.int64(2)), "d": float("nan"),
                      "e": np.bool_(True)})
    assert got["a"] == 0.5 and type(got["a"]) is float and got["b"] == [0, 1, 2] and got["c"] == [1, 2]
    assert got["d"] != got["d"] and got["e"] is True


@pytest.mark.parametrize("plugin,needle", [
    (bad_plugin.ImpostorPlugin(), "report format 'json' is registered by both 'auditor.report' and 'ImpostorPlugin'"),
    (bad_plugin.EscapePlugin(), "reporter 'escape' writes to '../../escaped.json', which is not a plain file name"),
])
def test_reporter_clash_or_escape_stops_the_run(plugin: object, needle: str) -> None:
    with pytest.raises(PluginLoadError) as e:
        build_registry(extra_plugins=[plugin])
    assert needle in str(e.value)


def test_reporter_errors_via_the_cli_exit_4_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    mod = types.ModuleType("impostor_reporters")
    mod.auditor_register_reporters = bad_plugin.ImpostorPlugin.auditor_register_reporters.__get__(  # type: ignore[attr-defined]
        bad_plugin.ImpostorPlugin())
    monkeypatch.setitem(sys.modules, "impostor_reporters", mod)
    r = CliRunner().invoke(main, ["checks", "-p", "impostor_reporters"])
    assert r.exit_code == 4 and "report format 'json' is registered by both" in r.stderr
    assert r.stderr.count("\n") == 1


def test_a_raising_reporter_loses_only_its_own_file(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    model, data, _ = mlp
    p = write_spec(tmp_path / "spec.yaml", {
        "model": {"path": str(model)}, "data": {"path": str(data)},
        "checks": [{"use": "fake.const", "with": {"metrics": {"accuracy": 0.9}}}],
        "report": {"dir": str(tmp_path / "r"), "formats": ["json", "raising", "markdown"]}})
    r = CliRunner().invoke(main, ["run", str(p), "-p", "fake_plugin", "-p", "bad_plugin", "-q"])
    assert r.exit_code == 1, r.stderr  # the audit passed, but a report is missing: never exit 0
    assert ("report format 'raising' (bad_plugin) failed, its file was not written: RuntimeError: reporter bug"
            in r.stderr)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.md"]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["status"] == "info"
    assert not (tmp_path / "escaped.json").exists()
