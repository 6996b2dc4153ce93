"""The terminal display: live bars on a TTY, plain lines in CI or when piped, the summary table."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from builders import blobs, mlp_weights, write_mlp
from click.testing import CliRunner
from rich.console import Console

from auditor.cli import main
from auditor.plugins import build_registry
from auditor.runner import Runner, load_inputs
from auditor.spec import parse_spec
from auditor.terminal import TerminalEvents, in_ci, interactive, summary_table

N, BATCH = 450, 100


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def spec_doc(tmp_path: Path) -> dict[str, Any]:
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(n=N, w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return {"version": 1, "model": {"path": str(model)},
            "data": {"path": str(tmp_path / "d.npz"), "y": "y", "batch_size": BATCH},
            "checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 0.999}}},
                       {"use": "sparsity.profile"}],
            "report": {"dir": str(tmp_path / "r"), "formats": ["json"]}}


def _run(tmp_path: Path, doc: dict[str, Any], events: TerminalEvents) -> dict[str, Any]:
    registry = build_registry()
    spec = parse_spec(tmp_path / "spec.yaml", registry.checks, sorted(registry.reporters), doc=doc)
    return Runner(spec, registry, events).run(load_inputs(spec)).to_dict()


def test_ci_and_tty_detection() -> None:
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and in_ci({"CI": "yes"})
    assert not in_ci({}) and not in_ci({"CI": "false"}) and not in_ci({"CI": "0"}) and not in_ci({"CI": ""})
    assert interactive(Tty(), env={"TERM": "xterm"})
    assert not interactive(Tty(), env={"CI": "true", "TERM": "xterm"})
    assert not interactive(Tty(), env={"TERM": "dumb"})
    assert not interactive(io.StringIO(), env={"TERM": "xterm"})  # piped


def test_plain_lines_report_every_batch_when_not_rate_limited(tmp_path: Path, spec_doc: dict[str, Any]) -> None:
    buf = io.StringIO()
    events = TerminalEvents(console=Console(file=buf, width=200), live=False, interval=0.0)
    doc = _run(tmp_path, spec_doc, events)
    out = buf.getvalue()
    assert "\x1b[" not in out  # no escape codes in a log
    lines = out.splitlines()
    assert lines[0] == "[1/2] performance.metrics ..."
    # One line per batch, as ONNX Runtime ran them: N rows in batches of BATCH (computed independently).
    seen = [int(m.group(1)) for m in re.finditer(r"performance.metrics: inference (\d+)/450", out)]
    assert seen == np.minimum(np.arange(1, -(-N // BATCH) + 1) * BATCH, N).tolist()
    assert "(100%)" in out and "(22%)" in out  # 100/450
    dur = doc["checks"][0]["duration_s"]
    assert f"    performance.metrics: fail ({dur:.2f} s)" in lines
    assert "[2/2] sparsity.profile ..." in lines


def test_plain_progress_is_rate_limited(tmp_path: Path, spec_doc: dict[str, Any]) -> None:
    buf = io.StringIO()
    _run(tmp_path, spec_doc, TerminalEvents(console=Console(file=buf, width=200), live=False, interval=3600))
    assert "inference" not in buf.getvalue()  # a fast check in CI: start and end lines only
    assert len(buf.getvalue().splitlines()) == 4


def test_live_display_on_a_terminal(tmp_path: Path, spec_doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)  # these tests run in CI too
    monkeypatch.setenv("TERM", "xterm")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    events = TerminalEvents(console=console)
    assert events.live  # a terminal (forced), outside CI
    # Per batch: the running check's bar follows the progress the check reports.
    events.check_started(1, 2, "a.check")
    events.check_progress("a.check", 200, 450, "inference")
    task = next(t for t in events._progress.tasks if t.description.endswith("a.check"))
    assert (task.completed, task.total, task.fields["what"]) == (200, 450, "inference")
    events.close()
    # A whole run: finished lines stay, the bars are gone (transient), the display is stopped at the end.
    buf.truncate(0)
    doc = _run(tmp_path, spec_doc, TerminalEvents(console=console))
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "✘ performance.metrics: fail" in out and "i sparsity.profile: info" in out
    assert doc["checks"][1]["status"] == "info"  # ungated: ran, nothing asserted


def test_live_is_off_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    events = TerminalEvents(console=Console(file=io.StringIO(), force_terminal=True))
    assert not events.live


def test_quiet_prints_nothing(tmp_path: Path, spec_doc: dict[str, Any]) -> None:
    buf = io.StringIO()
    _run(tmp_path, spec_doc, TerminalEvents(quiet=True, console=Console(file=buf, force_terminal=True)))
    assert buf.getvalue() == ""


def test_summary_table(tmp_path: Path, spec_doc: dict[str, Any]) -> None:
    doc = _run(tmp_path, spec_doc, TerminalEvents(quiet=True))
    console = Console(record=True, width=240, file=io.StringIO())
    console.print(summary_table(doc))
    text = console.export_text()
    acc = doc["checks"][0]["metrics"]["accuracy"]
    assert f"accuracy={acc:.4g}" in text
    assert "0/1 met" in text and f"fail accuracy = {acc:.6g} (min 0.999)" in text
    assert "1 of 2 checks gated (0 of 1 gates met)" in text and "1 info, 1 fail" in text
    assert re.search(r"performance\.metrics\s+│ fail", text)


def test_cli_in_ci_prints_plain_lines(tmp_path: Path, spec_doc: dict[str, Any]) -> None:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec_doc))
    r = CliRunner().invoke(main, ["run", str(p)], env={"CI": "true"})
    assert r.exit_code == 1
    assert "[1/2] performance.metrics ..." in r.stderr and "    sparsity.profile: info" in r.stderr
    assert "\x1b[" not in r.stderr
    assert "audit of" in r.stdout
    assert r.stdout.rstrip().endswith("FAIL: 1 info, 1 fail; 1 of 2 checks gated (0 of 1 gates met)")
