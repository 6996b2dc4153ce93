"""Results are data: frozen keyword-only dataclasses. Rendering lives in the reporters.

:class:`AuditReport` is the typed report every reporter, ``auditor diff``, the render hook and the Python API
receive; ``to_dict()`` is the JSON report (schema 1) and :meth:`AuditReport.from_json` reads one back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from auditor.gallery import Gallery
from auditor.gallery import problems as gallery_problems

if TYPE_CHECKING:
    import pandas as pd


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


class _KeyAccess:
    """Read access by JSON key (``check["metrics"]``, ``report.get("summary")``) to the JSON form, so that
    reporters and render hooks written against the dict form of earlier versions keep working. New code uses
    the attributes."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON form's ``key``, or ``default``."""
        return self.to_dict().get(key, default)

    def keys(self) -> list[str]:
        """The JSON form's keys."""
        return list(self.to_dict())


def _known(cls: type, doc: Mapping[str, Any], renames: Mapping[str, str] | None = None) -> tuple[dict[str, Any],
                                                                                                  dict[str, Any]]:
    """Split a JSON dict into the dataclass fields of ``cls`` (``renames``: JSON key -> field) and the rest."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    renames = renames or {}
    known: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in doc.items():
        name = renames.get(k, k)
        (known if name in names else rest)[name if name in names else k] = v
    return known, rest


class Severity(str, Enum):
    """How much a :class:`Finding` matters: ``info`` is shown, ``warn`` turns a passing check into ``warn``,
    ``fail`` fails it. A ``str`` enum, so ``finding.severity == "warn"`` reads as before."""

    INFO = "info"
    WARN = "warn"
    FAIL = "fail"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Finding(_KeyAccess):
    """Something a check wants a person to look at.

    ``severity`` is a :class:`Severity` (or its name: ``"info"``, ``"warn"``, ``"fail"``); anything else raises
    ``ValueError`` here, where the plugin builds it (an unknown severity must never read as a pass).
    """

    message: str
    severity: Severity | str = Severity.INFO
    location: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            sev = Severity(self.severity)
        except ValueError:
            allowed = ", ".join(s.value for s in Severity)
            raise ValueError(f"Finding severity {self.severity!r} is not one of {allowed}") from None
        object.__setattr__(self, "severity", sev)
        if not isinstance(self.message, str):
            raise TypeError(f"Finding message must be a string, not {type(self.message).__name__}")
        if self.location is not None and not isinstance(self.location, str):
            raise TypeError(f"Finding location must be a string or None, not {type(self.location).__name__}")
        if not isinstance(self.data, Mapping):
            raise TypeError(f"Finding data must be a mapping, not {type(self.data).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {"message": self.message, "severity": Severity(self.severity).value}
        if self.location is not None:
            out["location"] = self.location
        if self.data:
            out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Finding:
        """A finding from its JSON form."""
        return cls(message=str(doc.get("message", "")), severity=str(doc.get("severity", "info")),
                   location=doc.get("location"), data=dict(doc.get("data") or {}))


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What a check's ``run`` returns: its metrics (JSON-able), findings, and notes on how it ran.

    ``gallery`` (optional, size-capped: :mod:`auditor.gallery`) holds a few example inputs for the HTML
    report (adversarial examples, fooling images); it goes into report.json beside the metrics, never into
    them, so gates and diffs do not see it. ``artifacts`` stay in memory (Python API) and out of the report.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    gallery: Gallery | None = None


class MalformedResult(TypeError):
    """A check returned something that is not a well-formed :class:`CheckResult` (the check is an error)."""


MAX_METRIC_DEPTH = 32
MAX_METRIC_VALUES = 1_000_000


def plain_json(value: Any, where: str = "metrics") -> Any:
    """``value`` as plain JSON types (dict with string keys, list, str, int, float, bool, None), numpy scalars
    and arrays converted; raise :class:`MalformedResult` naming the path of the first value that is not JSON
    (an object, a set, bytes, a non-string key, a structure that contains itself, or one too deep or too big).
    Non-finite floats stay floats: the JSON writer spells them."""
    count = 0
    active: set[int] = set()

    def conv(v: Any, path: str, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_METRIC_VALUES:
            raise MalformedResult(f"{where}: more than {MAX_METRIC_VALUES} values")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, Enum) and isinstance(v.value, str):
            return v.value
        if isinstance(v, np.generic):
            item = v.item()
            if isinstance(item, (bool, int, float, str)):
                return item
            raise MalformedResult(f"{path}: numpy {v.dtype} is not a JSON value")
        if depth >= MAX_METRIC_DEPTH:
            raise MalformedResult(f"{path}: nested deeper than {MAX_METRIC_DEPTH} levels")
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise MalformedResult(f"{path}: a numpy array of {v.dtype} is not JSON")
            if v.size > MAX_METRIC_VALUES:
                raise MalformedResult(f"{path}: an array of {v.size} values is too large for a report")
            return conv(v.tolist(), path, depth)
        if isinstance(v, (dict, list, tuple)):
            if id(v) in active:
                raise MalformedResult(f"{path}: contains itself")
            active.add(id(v))
            try:
                if isinstance(v, dict):
                    out: dict[str, Any] = {}
                    for k, item in v.items():
                        if not isinstance(k, str):
                            raise MalformedResult(f"{path}: key {k!r} is not a string")
                        out[k] = conv(item, f"{path}.{k}", depth + 1)
                    return out
                return [conv(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
            finally:
                active.discard(id(v))
        raise MalformedResult(f"{path}: {type(v).__name__} is not a JSON value")

    return conv(value, where, 0)


def validate_result(res: Any) -> CheckResult:
    """Check what a plugin's ``run`` returned and return it with plain JSON metrics; raise
    :class:`MalformedResult` with what is wrong. Plugins are third-party code: a malformed result must cost only
    that check, never the report."""
    if not isinstance(res, CheckResult):
        raise MalformedResult(f"run() returned {type(res).__name__}, not CheckResult")
    if not isinstance(res.metrics, Mapping):
        raise MalformedResult(f"metrics is a {type(res.metrics).__name__}, not a mapping")
    metrics = plain_json(res.metrics if isinstance(res.metrics, dict) else dict(res.metrics))
    if not isinstance(res.findings, (list, tuple)):
        raise MalformedResult(f"findings is a {type(res.findings).__name__}, not a list of Finding")
    findings = list(res.findings)
    for i, f in enumerate(findings):
        if not isinstance(f, Finding):
            raise MalformedResult(f"findings[{i}] is a {type(f).__name__}, not a Finding")
        if not isinstance(f.severity, Severity):  # built without __post_init__ (object.__setattr__ games)
            raise MalformedResult(f"findings[{i}].severity {f.severity!r} is not one of info, warn, fail")
        plain_json(f.data if isinstance(f.data, dict) else dict(f.data), f"findings[{i}].data")
    if not isinstance(res.notes, (list, tuple)) or not all(isinstance(n, str) for n in res.notes):
        raise MalformedResult(f"notes must be a list of strings, not {type(res.notes).__name__}"
                              + ("" if not isinstance(res.notes, (list, tuple)) else " with other items"))
    if not isinstance(res.artifacts, Mapping) or not all(isinstance(k, str) for k in res.artifacts):
        raise MalformedResult("artifacts must be a mapping with string keys")
    if res.gallery is not None and (wrong := gallery_problems(res.gallery)):
        raise MalformedResult("; ".join(wrong))
    return replace(res, metrics=metrics, findings=findings, notes=list(res.notes), artifacts=dict(res.artifacts))


@dataclass(frozen=True, kw_only=True)
class GateResult(_KeyAccess):
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

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GateResult:
        """A gate result from its JSON form (a ``null`` value or baseline stays ``None``)."""
        def num(v: Any) -> float | None:
            return None if v is None or isinstance(v, bool) else float(v) if isinstance(v, (int, float)) else None

        return cls(metric=str(doc["metric"]), op=str(doc["op"]), threshold=float(doc["threshold"]),
                   value=num(doc.get("value")), baseline=num(doc.get("baseline")), status=Status(doc["status"]),
                   severity=str(doc.get("severity", "fail")), message=str(doc.get("message", "")))


@dataclass(frozen=True, kw_only=True)
class CheckReport(_KeyAccess):
    """A check as it ran in one audit: the runner's record, the unit of every report.

    ``spec_line`` is the 1-based line of the check's ``use:`` in the spec file (``None`` for a spec given as a
    dict); ``extra`` holds JSON keys this version does not know (kept, so that a report read back and written
    again loses nothing). ``artifacts`` (e.g. a traceback) are not part of the JSON form; ``gallery`` (the
    check's example inputs, :mod:`auditor.gallery`) is, under the key ``gallery``.
    """

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
    spec_line: int | None = None
    gallery: Gallery | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gated(self) -> bool:
        """Whether anything was asserted on this check (at least one gate)."""
        return bool(self.gates)

    def metric(self, path: str, default: Any = None) -> Any:
        """A metric by dotted path (``per_class_recall.3``), ``default`` if absent."""
        from auditor.metrics import get

        return get(self.metrics, path, default)
    #: The Python traceback of a check that raised (status ``error``), kept for whoever debugs it.
    traceback: str | None = None

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
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.baseline_metrics is not None:
            out["baseline_metrics"] = self.baseline_metrics
        if self.spec_line is not None:
            out["spec_line"] = self.spec_line
        if self.gallery is not None:
            out["gallery"] = self.gallery.to_dict()
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CheckReport:
        """A check from its JSON form; keys this version does not know go to ``extra``."""
        known, rest = _known(cls, doc)
        known.pop("artifacts", None)
        gallery = known.pop("gallery", None)
        return cls(
            **{**known,
               "id": str(doc["id"]), "use": str(doc.get("use", doc["id"])), "plugin": str(doc.get("plugin", "")),
               "status": Status(doc["status"]), "params": dict(doc.get("params") or {}),
               "metrics": dict(doc.get("metrics") or {}),
               "gates": [GateResult.from_dict(g) for g in doc.get("gates") or []],
               "findings": [Finding.from_dict(f) for f in doc.get("findings") or []],
               "notes": [str(n) for n in doc.get("notes") or []],
               "duration_s": float(doc.get("duration_s") or 0.0),
               "gallery": Gallery.from_dict(gallery) if isinstance(gallery, Mapping) else None},
            extra=rest)


@dataclass(frozen=True, kw_only=True)
class AuditReport(_KeyAccess):
    """A whole audit: the JSON report is ``to_dict()`` of this; :meth:`from_json` reads one back.

    What the Python API (:func:`auditor.audit`) returns: ``passed``, ``check(id)``, ``metrics(id)``,
    ``to_frame()``, ``save(dir)``, and an HTML view in Jupyter.
    """

    SCHEMA: ClassVar[int] = 1

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
    extra: dict[str, Any] = field(default_factory=dict)

    # --------------------------------------------------------------------------------------------- reading
    @property
    def passed(self) -> bool:
        """Whether the audit would exit 0: it completed, no gate failed, no check errored (``pass``, ``warn``,
        or ``info`` when nothing was gated: see :attr:`gating`)."""
        return self.status in OK_STATUSES and not self.interrupted

    @property
    def summary(self) -> dict[str, int]:
        """Count of checks per status."""
        return summarize(self.checks)

    @property
    def gating(self) -> dict[str, int]:
        """Checks gated, gates, gates met (see :func:`gating`)."""
        return gating(self.checks)

    def check(self, check_id: str) -> CheckReport:
        """One check by id (``KeyError`` naming the ids there are)."""
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(f"no check {check_id!r} in this report (checks: {', '.join(c.id for c in self.checks)})")

    def metrics(self, check_id: str) -> dict[str, Any]:
        """The metrics of one check."""
        return self.check(check_id).metrics

    # --------------------------------------------------------------------------------------------- JSON
    def to_json(self) -> str:
        """The JSON report's text (the tool's one encoder: non-finite numbers are ``null``)."""
        from auditor.jsonenc import dumps

        return dumps(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuditReport:
        """A report from its JSON form (schema 1). ``summary`` and ``gating`` are recomputed from the checks;
        keys this version does not know go to ``extra``."""
        if doc.get("schema", 1) != cls.SCHEMA:
            raise ValueError(f"report schema {doc.get('schema')} is not supported (this auditor reads 1)")
        known, rest = _known(cls, doc, {"spec": "spec_path"})
        for derived in ("schema", "summary", "gating"):
            rest.pop(derived, None)
        return cls(**{**known,
                      "status": Status(doc["status"]), "model": dict(doc.get("model") or {}),
                      "baseline": doc.get("baseline"), "data": doc.get("data"),
                      "environment": dict(doc.get("environment") or {}),
                      "checks": [CheckReport.from_dict(c) for c in doc["checks"]],
                      "spec_path": str(doc.get("spec", "")), "interrupted": bool(doc.get("interrupted", False)),
                      "started_at": str(doc.get("started_at", "")),
                      "duration_s": float(doc.get("duration_s") or 0.0)},
                   extra=rest)

    @classmethod
    def from_json(cls, source: str | Path) -> AuditReport:
        """A report from JSON text, or from a ``report.json`` file when given a :class:`~pathlib.Path` (or a
        string that is not JSON text)."""
        if isinstance(source, Path) or not source.lstrip().startswith("{"):
            source = Path(source).read_text(encoding="utf-8")
        doc = json.loads(source)
        if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list) or "status" not in doc:
            raise ValueError("not an auditor JSON report (report.json): no status and checks")
        return cls.from_dict(doc)

    # --------------------------------------------------------------------------------------------- views
    def to_frame(self) -> pd.DataFrame:
        """One row per (check, metric) with every scalar leaf of the metrics tree: ``check``, ``use``,
        ``status``, ``metric`` (dotted path), ``value``, ``baseline``, and the gate on it if any (``gate``,
        ``gate_status``). Needs pandas."""
        from auditor.api import report_frame

        return report_frame(self)

    def save(self, directory: str | Path, formats: list[str] | tuple[str, ...] = ("json", "markdown", "html"),
             ) -> list[Path]:
        """Write the report in ``formats`` (any installed format) to ``directory``; the paths written."""
        from auditor.api import save_report

        return save_report(self, Path(directory), list(formats))

    def _repr_html_(self) -> str:
        from auditor.api import report_html

        return report_html(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema 1), the source of truth for every other format."""
        out = {
            "schema": self.SCHEMA,
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
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out


def as_report(report: AuditReport | Mapping[str, Any]) -> AuditReport:
    """``report`` as the typed report (a JSON dict is read with :meth:`AuditReport.from_dict`)."""
    return report if isinstance(report, AuditReport) else AuditReport.from_dict(report)


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
