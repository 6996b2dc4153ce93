"""Results are data: frozen keyword-only dataclasses. Rendering lives in the reporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Outcome of a check, a gate or a whole audit.

    ``info``: the check ran and nothing was asserted (no gate, no warning or failing finding); a whole audit is
    ``info`` when no check was gated. It never reads as ``pass``: a pass means a bound was checked and held.
    Like ``pass`` and ``warn``, it exits 0.
    """

    PASS = "pass"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


# Worse statuses win when combining; skipped is neutral; info (nothing asserted) is below pass, so that one
# gate that held makes an audit ``pass`` while an audit with no gate at all stays ``info``.
_RANK = {Status.SKIPPED: 0, Status.INFO: 1, Status.PASS: 2, Status.WARN: 3, Status.FAIL: 4, Status.ERROR: 5}

#: Statuses that exit 0 (the release may go on).
OK_STATUSES = frozenset({Status.PASS, Status.INFO, Status.WARN})


def worst(statuses: list[Status]) -> Status:
    """The most severe status of ``statuses``; ``info`` when nothing was asserted (an empty list, or only
    skipped and info)."""
    if not statuses:
        return Status.INFO
    best = max(statuses, key=lambda s: _RANK[s])
    return Status.INFO if best is Status.SKIPPED else best


@dataclass(frozen=True, kw_only=True)
class Finding:
    """Something a check wants a person to look at.

    ``severity`` is ``info``, ``warn`` or ``fail``; a ``warn`` finding turns a passing check into ``warn``,
    a ``fail`` finding fails it.
    """

    message: str
    severity: str = "info"
    location: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {"message": self.message, "severity": self.severity}
        if self.location is not None:
            out["location"] = self.location
        if self.data:
            out["data"] = self.data
        return out


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What a check's ``run`` returns: its metrics (JSON-able), findings, and notes on how it ran."""

    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """One bound on one metric, evaluated."""

    metric: str
    op: str  # min, max, max_drop, max_increase
    threshold: float
    value: float | None
    baseline: float | None
    status: Status
    severity: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "value": self.value,
            "baseline": self.baseline,
            "status": self.status.value,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """A check as it ran in one audit: the runner's record, the unit of every report."""

    id: str
    use: str
    plugin: str
    status: Status
    params: dict[str, Any]
    metrics: dict[str, Any]
    gates: list[GateResult]
    findings: list[Finding]
    notes: list[str]
    duration_s: float
    error: str | None = None
    skip_reason: str | None = None
    baseline_metrics: dict[str, Any] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the report's ``checks`` entries)."""
        out: dict[str, Any] = {
            "id": self.id,
            "use": self.use,
            "plugin": self.plugin,
            "status": self.status.value,
            "params": self.params,
            "metrics": self.metrics,
            "gates": [g.to_dict() for g in self.gates],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "duration_s": round(self.duration_s, 4),
        }
        if self.error is not None:
            out["error"] = self.error
        if self.skip_reason is not None:
            out["skip_reason"] = self.skip_reason
        if self.baseline_metrics is not None:
            out["baseline_metrics"] = self.baseline_metrics
        return out


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """A whole audit: the JSON report is ``to_dict()`` of this."""

    status: Status
    model: dict[str, Any]
    baseline: dict[str, Any] | None
    data: dict[str, Any] | None
    environment: dict[str, Any]
    checks: list[CheckReport]
    spec_path: str
    interrupted: bool = False
    started_at: str = ""
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema 1), the source of truth for every other format."""
        return {
            "schema": 1,
            "status": self.status.value,
            "interrupted": self.interrupted,
            "spec": self.spec_path,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 4),
            "model": self.model,
            "baseline": self.baseline,
            "data": self.data,
            "environment": self.environment,
            "summary": summarize(self.checks),
            "gating": gating(self.checks),
            "checks": [c.to_dict() for c in self.checks],
        }


def summarize(checks: list[CheckReport]) -> dict[str, int]:
    """Count of checks per status."""
    counts = {s.value: 0 for s in Status}
    for c in checks:
        counts[c.status.value] += 1
    return counts


def gating(checks: list[CheckReport]) -> dict[str, int]:
    """How much of the audit was actually asserted: checks with at least one gate, gates, gates met."""
    gates = [g for c in checks for g in c.gates]
    return {
        "checks": len(checks),
        "checks_gated": sum(bool(c.gates) for c in checks),
        "gates": len(gates),
        "gates_met": sum(g.status is Status.PASS for g in gates),
    }
