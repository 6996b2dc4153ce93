"""Built-in plugin ``performance``: how well the model does its job on the audit data."""

from __future__ import annotations

from auditor import Check, CheckReport, hookimpl
from auditor_performance.metrics import PerformanceMetrics
from auditor_performance.render import render

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """``performance.metrics``."""
    return [PerformanceMetrics]


@hookimpl
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """The reliability diagram (and the generic plots of the other metrics) for ``performance.metrics``."""
    return render(check, fmt)
