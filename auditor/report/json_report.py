"""``report.json``: the source of truth."""

from __future__ import annotations

from typing import Any

from auditor.jsonenc import NONFINITE, json_number, jsonable
from auditor.report.base import Reporter
from auditor.results import AuditReport

__all__ = ["NONFINITE", "JsonReporter", "json_number", "jsonable"]


class JsonReporter(Reporter):
    """Writes the report as indented JSON (:meth:`AuditReport.to_json`: non-finite numbers are ``null``)."""

    format = "json"
    filename = "report.json"

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """Indented JSON text."""
        return report.to_json()
