"""``auditor card report.json``: every section of the model card is there, and every number in it is the one in
report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from builders import blobs, mlp_weights, write_mlp
from click.testing import CliRunner

from auditor.card import render_card
from auditor.cli import main
from auditor.metrics import scalars
from auditor.results import AuditReport


def _v(v: Any) -> str:
    """How the card prints a value: 6 significant digits, ``–`` for null, booleans in lower case."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("card")
    w = mlp_weights()
    write_mlp(tmp / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y, site=np.where(np.arange(len(y)) % 4 == 0, "a", "b"))
    spec = tmp / "audit.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": "m.onnx"},
                                    "data": {"path": "d.npz", "y": "y", "groups": ["site"]}, "checks": [
        {"use": "performance.metrics", "gate": {"accuracy": {"min": 0.5}, "ece": {"max": 0.01}}},
        {"use": "bias.group_metrics", "with": {"bootstrap": 20}},
        {"use": "robustness.noise", "with": {"sigma": [0.5]}},
        {"use": "fake.const", "name": "skips", "with": {"skip": True}},
    ], "report": {"dir": "r", "formats": ["json"]}}, sort_keys=False))
    assert CliRunner().invoke(main, ["run", str(spec), "-p", "fake_plugin", "-q"]).exit_code == 1
    report_path = tmp / "r" / "report.json"
    out = tmp / "MODEL_CARD.md"
    r = CliRunner().invoke(main, ["card", str(report_path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    return out.read_text(), json.loads(report_path.read_text()), report_path


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading):]
    ends = [i for i in (rest.find(f"\n{level} "),) if i >= 0]
    return rest[: ends[0]] if ends else rest


def test_every_section_is_there(card: tuple[str, dict[str, Any], Path]) -> None:
    text, _, _ = card
    for heading in ("# Model card: m.onnx", "## Model Details", "### Model Description", "### Intended uses",
                    "## Evaluation", "### Testing Data", "### Results", "## Bias, Risks, and Limitations",
                    "### Bias and fairness", "### Robustness", "### Known limitations",
                    "## How the numbers were obtained"):
        assert f"\n{heading}\n" in f"\n{text}", heading
    assert text.count("_To be written by the model's owner") == 2  # never invented


def test_every_number_is_the_reports(card: tuple[str, dict[str, Any], Path]) -> None:
    text, report, _ = card
    checks = {c["id"]: c for c in report["checks"]}
    m = report["model"]
    details = _section(text, "## Model Details")
    assert f"| sha256 | `{m['sha256']}` |" in details
    assert f"IR version {m['ir_version']}, opset {m['opset']}" in details
    data = _section(text, "### Testing Data")
    assert f"{report['data']['rows']} rows" in data and "groups site" in data
    results = _section(text, "### Results")
    for g in checks["performance.metrics"]["gates"]:
        row = (f"| `performance.metrics` | `{g['metric']}` | {g['op']} {_v(g['threshold'])} | {_v(g['value'])} | "
               f"– | ")
        assert row in results, row
    assert "❌ fail |" in results and "✅ pass |" in results  # ece max 0.01 fails, accuracy min 0.5 holds
    for section, cid in (("### Bias and fairness", "bias.group_metrics"), ("### Robustness", "robustness.noise"),
                         ("### Results", "performance.metrics")):
        body = _section(text, section)
        rows = scalars(checks[cid]["metrics"], max_depth=2, inline_lists=0)
        assert rows
        for name, v in rows[:40]:
            assert f"| `{name}` | {_v(v)} |" in body, (cid, name)
    limits = _section(text, "### Known limitations")
    assert "`skips` was not evaluated: asked to skip" in limits
    ece = next(g for g in checks["performance.metrics"]["gates"] if g["metric"] == "ece")
    assert ece["message"] in limits
    how = _section(text, "## How the numbers were obtained")
    assert f"seed {report['environment']['seed']}" in how and report["spec"] in how
    for c in report["checks"]:
        assert f"| `{c['id']}` | `{c['use']}` | {c['plugin']} |" in how
    g = report["gating"]
    assert f"{g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} gates met" in text


def test_card_of_the_typed_report_and_bad_input(card: tuple[str, dict[str, Any], Path], tmp_path: Path) -> None:
    text, _, path = card
    assert render_card(AuditReport.from_json(path)) == text
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    r = CliRunner().invoke(main, ["card", str(bad)])
    assert r.exit_code == 2 and "not an auditor JSON report" in r.output
    # stdout when no -o is given
    r = CliRunner().invoke(main, ["card", str(path)])
    assert r.exit_code == 0 and r.output.rstrip("\n") == text.rstrip("\n")


def test_front_matter_is_a_hub_model_index_with_the_reports_numbers(card: tuple[str, dict[str, Any], Path]) -> None:
    text, report, _ = card
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "onnx" and "onnx" in meta["tags"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "m"
    checks = {c["id"]: c for c in report["checks"]}
    got: dict[str, dict[str, Any]] = {}
    for res in entry["results"]:
        assert res["task"] == {"type": "tabular-classification"}
        assert res["dataset"] == {"type": "d.npz", "name": f"d.npz ({report['data']['rows']} rows)"}
        for m in res["metrics"]:
            cid, metric = m["name"].split(" (")[0].split(": ")
            got.setdefault(cid, {})[metric] = m
    # every check that ran on the data is there (the skipped one is not), each number exactly the report's
    assert set(got) == {"performance.metrics", "bias.group_metrics", "robustness.noise"}
    for cid, metrics in got.items():
        want = [k for k, v in checks[cid]["metrics"].items() if isinstance(v, float) and k != "duration_s"]
        gated = [g["metric"] for g in checks[cid]["gates"]]
        assert list(metrics) == list(dict.fromkeys(gated + want))
        for metric, m in metrics.items():
            assert m["value"] == checks[cid]["metrics"][metric]
    acc = got["performance.metrics"]["accuracy"]
    assert acc["type"] == "accuracy" and acc["name"] == "performance.metrics: accuracy (gate min 0.5: pass)"
    assert got["performance.metrics"]["ece"]["name"].endswith("(gate max 0.01: fail)")
    # the Hub's own reader finds the same results
    hub = pytest.importorskip("huggingface_hub")
    results = hub.ModelCard(text).data.eval_results
    assert len(results) == sum(len(v) for v in got.values())
    assert {(r.metric_name, r.metric_value) for r in results} == {
        (m["name"], m["value"]) for v in got.values() for m in v.values()}
    assert all(r.task_type == "tabular-classification" and r.dataset_type == "d.npz" for r in results)
