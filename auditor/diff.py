"""``auditor diff OLD.json NEW.json``: what changed between two JSON reports, metric by metric, and which
gates flipped.

Checks are matched by id, metrics by their dotted path (the names gates use: ``per_class_recall.3``,
``curve.2.accuracy``), gates by ``(metric, bound)``. A number has changed when it differs by more than the
tolerance (NaN equals NaN); anything else when it is not equal.

A gate *regressed* when it was met (or only warned) in OLD and fails in NEW; a gate of a check that errors in
NEW could not be evaluated and regresses too. ``auditor diff`` exits 1 when any gate regressed, so that CI
can stop a release that got worse than the last one even where each report on its own would be read alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import SpecError
from auditor.jsonenc import dumps, json_number, jsonable
from auditor.metrics import leaves
from auditor.results import AuditReport, CheckReport, GateResult, as_report


def load_report(path: Path) -> AuditReport:
    """A JSON report from disk; a missing, unreadable or foreign file is a one-line error (exit 2)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(str(path), ["report not found"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"not JSON: {exc}"]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list) or "status" not in doc:
        raise SpecError(str(path), ["not an auditor JSON report (report.json): no status and checks"])
    try:
        return AuditReport.from_dict(doc)
    except ValueError as exc:  # a schema this version does not read, an unknown status
        raise SpecError(str(path), [str(exc)]) from None
    except (KeyError, TypeError) as exc:
        raise SpecError(str(path), [f"not an auditor JSON report (report.json): bad entry {exc}"]) from None


#: Every leaf of a metrics tree under its dotted path (see :func:`auditor.metrics.leaves`).
flatten = leaves


@dataclass
class MetricChange:
    """One metric that differs: ``kind`` is ``changed``, ``added`` or ``removed``; ``delta`` is NEW − OLD and
    ``relative`` that over ``|OLD|`` (numbers only, ``None`` when OLD is 0 or not finite)."""

    metric: str
    kind: str
    old: Any = None
    new: Any = None
    delta: float | None = None
    relative: float | None = None


@dataclass
class GateFlip:
    """A gate whose status changed between the reports (``error``: its check errored, not evaluated)."""

    check: str
    metric: str
    op: str
    threshold: Any
    old_status: str
    new_status: str
    old_value: Any = None
    new_value: Any = None
    old_threshold: Any = None

    @property
    def regressed(self) -> bool:
        """Met (or only warned) before, failing (or not evaluable) now."""
        return self.old_status in ("pass", "warn") and self.new_status in ("fail", "error")


@dataclass
class CheckDiff:
    """A check present in both reports."""

    id: str
    use: str
    old_status: str
    new_status: str
    changes: list[MetricChange] = field(default_factory=list)
    unchanged: int = 0
    gates_added: list[str] = field(default_factory=list)
    gates_removed: list[str] = field(default_factory=list)


@dataclass
class ReportDiff:
    """Everything that changed between OLD and NEW."""

    old: str
    new: str
    old_status: str
    new_status: str
    old_model: dict[str, Any]
    new_model: dict[str, Any]
    tolerance: float
    checks: list[CheckDiff] = field(default_factory=list)
    added_checks: list[str] = field(default_factory=list)
    removed_checks: list[str] = field(default_factory=list)
    gate_flips: list[GateFlip] = field(default_factory=list)

    @property
    def regressions(self) -> list[GateFlip]:
        """Gates that went from pass to fail."""
        return [g for g in self.gate_flips if g.regressed]

    @property
    def model_changed(self) -> bool:
        """Whether NEW audited a different model file (by content)."""
        return self.old_model.get("sha256") != self.new_model.get("sha256")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``--format json``)."""
        return {
            "old": self.old, "new": self.new,
            "status": {"old": self.old_status, "new": self.new_status},
            "model": {"old": {k: self.old_model.get(k) for k in ("path", "sha256")},
                      "new": {k: self.new_model.get(k) for k in ("path", "sha256")},
                      "changed": self.model_changed},
            "tolerance": self.tolerance,
            "regressed": bool(self.regressions),
            "gate_flips": [{**asdict(g), "regressed": g.regressed} for g in self.gate_flips],
            "added_checks": self.added_checks, "removed_checks": self.removed_checks,
            "checks": [asdict(c) for c in self.checks],
        }


def _same(a: Any, b: Any, tol: float) -> tuple[bool, float | None, float | None]:
    """Whether two leaves are equal (numbers within ``tol``), and the delta/relative change of numbers."""
    x, y = json_number(a), json_number(b)
    if x is None or y is None:
        return a == b, None, None
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y), None, None
    if math.isinf(x) or math.isinf(y):
        return x == y, None, None
    d = y - x
    rel = d / abs(x) if x != 0 else None
    return abs(d) <= tol, d, rel


def _is_timing(path: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return last in ("duration_s", "seconds", "wall_s", "time_s") or last.endswith("_duration_s")


def diff_metrics(old: dict[str, Any], new: dict[str, Any], tol: float = 0.0) -> tuple[list[MetricChange], int]:
    """Changed, added and removed metrics (in NEW's order, removed ones last) and the count unchanged."""
    # Wall times are noise between two runs, not a change of the model: left out of metric diffs.
    a = {k: v for k, v in flatten(old).items() if not _is_timing(k)}
    b = {k: v for k, v in flatten(new).items() if not _is_timing(k)}
    changes: list[MetricChange] = []
    unchanged = 0
    for k, v in b.items():
        if k not in a:
            changes.append(MetricChange(k, "added", new=v))
            continue
        same, d, rel = _same(a[k], v, tol)
        if same:
            unchanged += 1
        else:
            changes.append(MetricChange(k, "changed", a[k], v, d, rel))
    changes += [MetricChange(k, "removed", old=v) for k, v in a.items() if k not in b]
    return changes, unchanged


def _gate_key(g: GateResult) -> tuple[str, str]:
    return g.metric, g.op


def diff_reports(old: AuditReport | Mapping[str, Any], new: AuditReport | Mapping[str, Any], *,
                 tolerance: float = 0.0, old_name: str = "OLD", new_name: str = "NEW") -> ReportDiff:
    """Compare two reports (typed, or JSON dicts read with :meth:`AuditReport.from_dict`)."""
    a, b = as_report(old), as_report(new)
    out = ReportDiff(old_name, new_name, a.status.value, b.status.value, a.model, b.model, tolerance)
    old_checks: dict[str, CheckReport] = {c.id: c for c in a.checks}
    new_ids = {c.id for c in b.checks}
    out.added_checks = [c.id for c in b.checks if c.id not in old_checks]
    out.removed_checks = [c.id for c in a.checks if c.id not in new_ids]
    for nc in b.checks:
        oc = old_checks.get(nc.id)
        if oc is None:
            continue
        # compared in their JSON form, so that a report in memory and the same report read back are equal
        changes, unchanged = diff_metrics(jsonable(oc.metrics), jsonable(nc.metrics), tolerance)
        cd = CheckDiff(nc.id, nc.use, oc.status.value, nc.status.value, changes, unchanged)
        og = {_gate_key(g): g for g in oc.gates}
        ng = {_gate_key(g): g for g in nc.gates}
        for key, g in og.items():
            h = ng.get(key)
            if h is None:
                if nc.status.value == "error":
                    # The check crashed: its gates were not evaluated, which must not read as still met.
                    out.gate_flips.append(GateFlip(nc.id, key[0], key[1], g.threshold, g.status.value,
                                                   "error", g.value, None, g.threshold))
                else:
                    cd.gates_removed.append(f"{key[0]} {key[1]}")
                continue
            if g.status is not h.status:
                out.gate_flips.append(GateFlip(nc.id, key[0], key[1], h.threshold, g.status.value,
                                               h.status.value, g.value, h.value, g.threshold))
        cd.gates_added = [f"{k[0]} {k[1]}" for k in ng if k not in og]
        out.checks.append(cd)
    return out


# ------------------------------------------------------------------------------------------------ rendering


def _v(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        s = dumps(v, indent=None)
        return s if len(s) <= 40 else s[:37] + "..."
    return str(v)


def _change(c: MetricChange) -> str:
    if c.kind == "added":
        return f"added: {_v(c.new)}"
    if c.kind == "removed":
        return f"removed (was {_v(c.old)})"
    s = f"{_v(c.old)} -> {_v(c.new)}"
    if c.delta is not None:
        s += f" ({c.delta:+.4g}" + (f", {100 * c.relative:+.1f}%" if c.relative is not None else "") + ")"
    return s


def _ordered(changes: list[MetricChange]) -> list[MetricChange]:
    """Headline (top-level) metrics first, then nested ones; metric order otherwise."""
    return sorted(changes, key=lambda c: c.metric.count("."))


def _bound(g: GateFlip, arrow: str = "->") -> str:
    """``min 0.9``, or ``min 0.9 -> 0.95`` when the spec moved the threshold."""
    if g.old_threshold is not None and g.old_threshold != g.threshold:
        return f"{g.op} {_v(g.old_threshold)} {arrow} {_v(g.threshold)}"
    return f"{g.op} {_v(g.threshold)}"


def _flip(g: GateFlip) -> str:
    mark = "REGRESSED" if g.regressed else ("fixed" if g.new_status == "pass" else "changed")
    vals = f"value {_v(g.old_value)} -> {_v(g.new_value)}"
    return f"{g.check}: {g.metric} {_bound(g)}: {g.old_status} -> {g.new_status} ({vals}) [{mark}]"


def render_text(d: ReportDiff, max_rows: int = 25) -> str:
    """Plain text for a terminal or a CI log."""
    lines = [f"diff {d.old} -> {d.new}", f"status: {d.old_status} -> {d.new_status}"]
    if d.model_changed:
        lines.append(f"model: {d.old_model.get('path')} (sha256 {str(d.old_model.get('sha256'))[:12]}) -> "
                     f"{d.new_model.get('path')} (sha256 {str(d.new_model.get('sha256'))[:12]})")
    if d.gate_flips:
        lines += ["", "gates that flipped:"] + [f"  {_flip(g)}" for g in d.gate_flips]
    else:
        lines += ["", "no gate changed status"]
    if d.added_checks:
        lines.append(f"checks added: {', '.join(d.added_checks)}")
    if d.removed_checks:
        lines.append(f"checks removed: {', '.join(d.removed_checks)}")
    quiet = [c.id for c in d.checks if not (c.changes or c.gates_added or c.gates_removed)
             and c.old_status == c.new_status]
    if quiet:
        lines.append(f"unchanged: {', '.join(quiet)}")
    for c in d.checks:
        if c.id in quiet:
            continue
        status = c.new_status if c.old_status == c.new_status else f"{c.old_status} -> {c.new_status}"
        lines += ["", f"{c.id} ({status}): {len(c.changes)} changed, {c.unchanged} unchanged"]
        shown = _ordered(c.changes)[:max_rows]
        width = max((len(x.metric) for x in shown), default=0)
        lines += [f"  {x.metric.ljust(width)}  {_change(x)}" for x in shown]
        if len(c.changes) > max_rows:
            lines.append(f"  ... {len(c.changes) - max_rows} more (--max-rows, or --format json)")
        if c.gates_added:
            lines.append(f"  gates added: {', '.join(c.gates_added)}")
        if c.gates_removed:
            lines.append(f"  gates removed: {', '.join(c.gates_removed)}")
    n = len(d.regressions)
    lines += ["", f"{n} gate(s) regressed" if n else "no gate regressed"]
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    """Text safe in a Markdown table cell."""
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(d: ReportDiff, max_rows: int = 25) -> str:
    """Markdown for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""
    icon = {"pass": "✅", "info": "ℹ️", "warn": "⚠️", "fail": "❌", "error": "💥", "skipped": "⏭️"}
    head = "❌ gates regressed" if d.regressions else "✅ no gate regressed"
    lines = [f"## Audit diff: {head}", "",
             f"Status {icon.get(d.old_status, '')} {d.old_status} → {icon.get(d.new_status, '')} {d.new_status}"
             f" · `{_md(d.old)}` → `{_md(d.new)}`"]
    if d.model_changed:
        lines.append(f"Model sha256 `{str(d.old_model.get('sha256'))[:12]}` → "
                     f"`{str(d.new_model.get('sha256'))[:12]}`")
    if d.gate_flips:
        lines += ["", "### Gates that flipped", "", "| check | gate | before | after | value |",
                  "|---|---|---|---|---|"]
        for g in d.gate_flips:
            after = f"{icon.get(g.new_status, '')} {g.new_status}" + (" **regressed**" if g.regressed else "")
            lines.append(f"| `{_md(g.check)}` | `{_md(g.metric)}` {_md(_bound(g, '→'))} | "
                         f"{icon.get(g.old_status, '')} {g.old_status} | {after} | "
                         f"{_md(_v(g.old_value))} → {_md(_v(g.new_value))} |")
    if d.added_checks or d.removed_checks:
        lines.append("")
        if d.added_checks:
            lines.append("Checks added: " + ", ".join(f"`{_md(c)}`" for c in d.added_checks))
        if d.removed_checks:
            lines.append("Checks removed: " + ", ".join(f"`{_md(c)}`" for c in d.removed_checks))
    changed = [c for c in d.checks if c.changes]
    if changed:
        lines += ["", "### Metrics", ""]
        for c in changed:
            status = c.new_status if c.old_status == c.new_status else f"{c.old_status} → {c.new_status}"
            lines += [f"<details><summary><code>{c.id}</code> ({status}): {len(c.changes)} changed, "
                      f"{c.unchanged} unchanged</summary>", "", "| metric | before | after | change |",
                      "|---|---:|---:|---:|"]
            for x in _ordered(c.changes)[:max_rows]:
                delta = "" if x.delta is None else f"{x.delta:+.4g}"
                if x.relative is not None:
                    delta += f" ({100 * x.relative:+.1f}%)"
                if x.kind != "changed":
                    delta = x.kind
                lines.append(f"| `{_md(x.metric)}` | {_md(_v(x.old))} | {_md(_v(x.new))} | {delta} |")
            if len(c.changes) > max_rows:
                lines.append(f"| … {len(c.changes) - max_rows} more | | | |")
            lines += ["", "</details>", ""]
    elif not d.gate_flips:
        lines += ["", "No metric changed."]
    return "\n".join(lines).rstrip() + "\n"


def render(d: ReportDiff, fmt: str = "text", max_rows: int = 25) -> str:
    """The diff as ``text``, ``markdown`` or ``json``."""
    if fmt == "json":
        return dumps(d.to_dict()) + "\n"
    if fmt == "markdown":
        return render_markdown(d, max_rows)
    return render_text(d, max_rows)
