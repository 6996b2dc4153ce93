"""Errors of the Ray engine (importable without Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from auditor.errors import AuditorError, ExitCode

if TYPE_CHECKING:
    from auditor.results import AuditReport


class ClusterError(AuditorError):
    """The Ray cluster cannot be reached, or its workers cannot start (exit code 4, one line)."""

    exit_code = ExitCode.LOAD_ERROR


class ClusterLost(ClusterError):
    """The cluster went away (or its workers kept dying) mid-audit; carries the partial report, which is marked
    ``interrupted`` and says why in ``environment.execution.error``."""

    def __init__(self, message: str, report: AuditReport) -> None:
        super().__init__(message)
        self.report = report
