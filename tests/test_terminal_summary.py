"""The end-of-run summary shows the gated metrics (not the first keys) and the reason for every warning and skip;
``auditor checks NAME`` shows one check."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fake_plugin
from click.testing import CliRunner
from rich.console import Console

from auditor.cli import main
from auditor.terminal import summary_table
from auditor.testing import run_audit


def test_summary_shows_gated_metrics_and_reasons(tmp_path: Path, mlp: tuple[Path, Path, Any]) -> None:
    model, data, _ = mlp
    many = {k: float(i) for i, k in enumerate("abcdefgh")} | {"zeta": 0.25}
    res = run_audit({"checks": [
        {"use": "fake.const", "name": "gated", "with": {"metrics": many}, "gate": {"zeta": {"max": 0.5}}},
        {"use": "fake.const", "name": "warned", "with": {"metrics": {"x": 1}, "finding": "warn"}},
        {"use": "fake.const", "name": "skipped", "with": {"skip": True}},
    ]}, model=model, data=data, plugins=[fake_plugin], workdir=tmp_path)
    assert res.report is not None, res.error
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(summary_table(res.report))
    text = console.export_text()
    gated = next(ln for ln in text.splitlines() if ln.startswith("│ gated"))
    assert "zeta=0.25" in gated and "a=0" in gated and "h=7" not in gated  # the gated metric first, then 4 more
    warned = next(ln for ln in text.splitlines() if ln.startswith("│ warned"))
    assert "warn look" in warned  # the finding that made it warn
    assert "asked to skip" in next(ln for ln in text.splitlines() if ln.startswith("│ skipped"))


def test_checks_name_shows_one_check() -> None:
    r = CliRunner().invoke(main, ["checks", "performance.metrics"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("performance.metrics  [plugin performance")
    assert sum(1 for ln in r.output.splitlines() if ln and not ln.startswith(" ")) == 1
    j = CliRunner().invoke(main, ["checks", "performance.metrics", "robustness.noise", "--json"])
    assert [c["name"] for c in json.loads(j.output)] == ["performance.metrics", "robustness.noise"]
    bad = CliRunner().invoke(main, ["checks", "performance.metric"])
    assert bad.exit_code == 2
    assert "no installed check 'performance.metric' (did you mean 'performance.metrics'?)" in bad.output
