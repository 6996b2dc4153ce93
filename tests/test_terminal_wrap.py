"""The end-of-run summary at several terminal widths: lines break between words only (never inside a metric, a
number, a name or a path), nothing is wider than the terminal unless it is one word longer than the line, and
the reason for every skip, error, warning and unmet gate is there in full."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from auditor.report.markdown import headline
from auditor.results import AuditReport, CheckReport, Finding, GateResult, Status
from auditor.terminal import print_summary, summary

LONG = ("the model takes other per-sample inputs (attention_mask, token_type_ids); synthetic noise images have no "
        "data rows to take them from")
PATH = "/very/long/path/to/a/folder/with/the/model/weights/resnet50-imagenet-v1.onnx"


def _check(cid: str, status: Status, **kw: object) -> CheckReport:
    base: dict[str, object] = {"id": cid, "use": cid, "plugin": cid.split(".")[0], "status": status, "params": {},
                               "metrics": {}, "gates": [], "findings": [], "notes": [], "duration_s": 1.23456}
    return CheckReport(**{**base, **kw})  # type: ignore[arg-type]


def report(paths: bool = True) -> AuditReport:
    metrics = {"median_perturbation_norm": 0.0312345678, "success_rate": 0.987654321, "robust_accuracy": 0.0123456,
               "clean_accuracy": 0.9911, "queries_total": 1234567, "n_attacked": 500}
    gate = GateResult(metric="success_rate", op="max", threshold=0.5, value=0.987654321, baseline=None,
                      status=Status.FAIL, severity="fail", message="success_rate = 0.987654 (max 0.5)")
    where = PATH if paths else "model.onnx"
    checks = [
        _check("robustness.square_attack", Status.FAIL, metrics=metrics, gates=[gate],
               findings=[Finding(message="3 adversarial examples failed verification in a fresh session "
                                         "(nondeterministic outputs)", severity="warn")]),
        _check("robustness.fooling", Status.SKIPPED, skip_reason=LONG),
        _check("performance.metrics", Status.WARN, metrics={"accuracy": 0.91234, "ece": 0.0456789},
               findings=[Finding(message=f"could not run on the baseline model: cannot read {where}",
                                 severity="warn")]),
        _check("sparsity.conditioning", Status.ERROR, error=f"ValueError: weight W12 of {where} is not 2-D"),
    ]
    return AuditReport(status=Status.FAIL, model={"path": where}, baseline=None, data=None, environment={},
                       checks=checks, spec_path="audit.yaml")


def _lines(width: int, paths: bool) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    print_summary(console, report(paths))
    return console.export_text().splitlines()


def _words(text: str) -> list[str]:
    return text.split()


def _whole(word: str, lines: list[str]) -> bool:
    """Whether ``word`` appears unbroken on one line, bounded by spaces or table borders."""
    pat = re.compile(r"(?:^|[\s│┃|])" + re.escape(word) + r"(?=$|[\s│┃|])")
    return any(pat.search(ln) for ln in lines)


@pytest.mark.parametrize("paths", [True, False])
@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
def test_summary_wraps_between_words_at_every_width(width: int, paths: bool) -> None:
    lines = _lines(width, paths)
    rep = report(paths)
    expected: list[str] = []
    for c in rep.checks:
        expected.append(c.id)
        if c.status is Status.SKIPPED:
            expected += _words(f"skipped: {c.skip_reason}")
        elif c.status is Status.ERROR:
            expected += _words(f"error: {c.error}")
        else:
            expected += _words(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in headline(c, 5)))
        expected += [w for g in c.gates if g.status is not Status.PASS for w in _words(g.message)]
        expected += [w for f in c.findings if f.severity in ("warn", "fail") for w in _words(f.message)]
    assert "success_rate=0.9877," in expected and (PATH in expected) == paths
    broken = [w for w in expected if not _whole(w, lines)]
    assert broken == [], (width, broken, "\n".join(lines))
    for ln in lines:
        # only a word longer than the line itself may stick out, on a line of its own
        assert len(ln) <= width or len(ln.split()) == 1, (width, ln)
    flat = " ".join(" ".join(lines).replace("│", " ").split())
    assert "1 warn, 1 fail, 1 error, 1 skipped; 1 of 4 checks gated (0 of 1 gates met)" in flat


def test_a_wide_terminal_without_long_words_gets_the_table() -> None:
    rep = report(paths=False)
    assert type(summary(rep, 200)).__name__ == "Table" and type(summary(rep, 60)).__name__ == "Group"
    assert type(summary(report(paths=True), 200)).__name__ == "Group"  # a path longer than any column
