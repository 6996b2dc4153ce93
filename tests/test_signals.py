"""SIGINT and SIGTERM sent to a real ``auditor run`` at several points: every report written is complete and
true, or says ``interrupted``; none is missing; the exit code is 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from auditor.testing import write_spec

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FORMATS = ["json", "markdown", "junit", "slow"]
FILES = {"json": "report.json", "markdown": "report.md", "junit": "junit.xml", "slow": "slow.txt"}


def start(tmp_path: Path, mlp, checks: list[dict]) -> tuple[subprocess.Popen[str], Path, Path]:  # type: ignore[type-arg]
    model, data, _ = mlp
    out = tmp_path / "r"
    spec = write_spec(tmp_path / "spec.yaml", {"model": {"path": str(model)}, "data": {"path": str(data)},
                                               "checks": checks, "report": {"dir": str(out), "formats": FORMATS}})
    marker = tmp_path / "marker"
    env = {**os.environ, "BAD_PLUGIN_MARKER": str(marker), "CI": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), str(TESTS)])}
    # The slow plugins are left out: this is about the run's skeleton, not about the checks.
    builtins = ("torch", "transfer", "robustness", "bias", "sparsity", "performance")
    cmd = [sys.executable, "-m", "auditor.cli", "run", str(spec), "-p", "fake_plugin", "-p", "bad_plugin", "-q",
           *[a for b in builtins for a in ("--disable", b)]]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker, out


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    for _ in range(6000):
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {path.name}: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def send(proc: subprocess.Popen[str], marker: Path, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    Path(str(marker) + ".sent").touch()  # the slow reporter stops waiting
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def assert_every_report_says_interrupted(out: Path) -> dict:  # type: ignore[type-arg]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(FILES.values())  # none missing, no debris
    doc = json.loads((out / "report.json").read_text())
    assert doc["interrupted"] is True and doc["status"] != "pass"
    assert "**Interrupted**" in (out / "report.md").read_text()
    suite = ET.parse(out / "junit.xml").getroot()
    case = suite.find(".//testcase[@name='audit interrupted']")
    assert case is not None and case.find("error") is not None and suite.get("errors") != "0"
    assert (out / "slow.txt").read_text() == f"status={doc['status']} interrupted=True\n"
    return doc  # type: ignore[no-any-return]


def test_sigterm_during_a_check_writes_a_partial_report(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    proc, marker, out = start(tmp_path, mlp, [{"use": "fake.const"}, {"use": "bad.slow"}, {"use": "fake.draw"}])
    wait_for(Path(str(marker) + ".check"), proc)
    code, err = send(proc, marker, signal.SIGTERM)
    assert code == 130, err
    assert "interrupted (SIGTERM): partial report written" in err and "Traceback" not in err
    doc = assert_every_report_says_interrupted(out)
    assert [c["status"] for c in doc["checks"]] == ["info", "error", "skipped"]
    assert doc["checks"][1]["error"] == "interrupted (SIGTERM)"


@pytest.mark.parametrize("sig,name", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_a_signal_while_reports_are_written_never_leaves_a_pass(tmp_path: Path, mlp, sig: int, name: str) -> None:  # type: ignore[no-untyped-def]
    # Every check passed, then the signal came while report.json was already rendered and slow.txt was not:
    # every file is rewritten as interrupted before any is committed.
    proc, marker, out = start(tmp_path, mlp, [{"use": "fake.const"}])
    wait_for(Path(str(marker) + ".report"), proc)
    code, err = send(proc, marker, sig)
    assert code == 130, err
    assert f"interrupted ({name})" in err and "Traceback" not in err
    doc = assert_every_report_says_interrupted(out)
    assert doc["status"] == "error" and [c["status"] for c in doc["checks"]] == ["info"]


def test_without_a_signal_the_same_run_passes(tmp_path: Path, mlp, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from auditor.cli import main

    model, data, _ = mlp
    spec = write_spec(tmp_path / "spec.yaml", {"model": {"path": str(model)}, "data": {"path": str(data)},
                                               "checks": [{"use": "fake.const"}],
                                               "report": {"dir": str(tmp_path / "r"), "formats": FORMATS}})
    monkeypatch.setenv("BAD_PLUGIN_MARKER", str(tmp_path / "marker"))
    (tmp_path / "marker.sent").touch()
    r = CliRunner().invoke(main, ["run", str(spec), "-p", "fake_plugin", "-p", "bad_plugin", "-q"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "r" / "slow.txt").read_text() == "status=info interrupted=False\n"
    assert json.loads((tmp_path / "r" / "report.json").read_text())["interrupted"] is False
