"""Results are data: frozen keyword-only dataclasses. Rendering lives in the reporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Outcome of a check, a gate or a whole audit."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


# Worse statuses win when combining; skipped is neutral.
_RANK = {Status.SKIPPED: 0, Status.PASS: 1, Status.WARN: 2, Status.FAIL: 3, Status.ERROR: 4}


def worst(statuses: list[Status]) -> Status:
    """The most severe status of ``statuses`` (``pass`` for an empty list)."""
    if not statuses:
        return Status.PASS
    best = max(statuses, key=lambda s: _RANK[s])
    return Status.PASS if best is Status.SKIPPED else best


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
            "checks": [c.to_dict() for c in self.checks],
        }


def summarize(checks: list[CheckReport]) -> dict[str, int]:
    """Count of checks per status."""
    counts = {s.value: 0 for s in Status}
    for c in checks:
        counts[c.status.value] += 1
    return counts
