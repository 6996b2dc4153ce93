"""Built-in plugin ``performance``: how well the model does its job on the audit data."""

from __future__ import annotations

from auditor import Check, hookimpl
from auditor_performance.metrics import PerformanceMetrics
from auditor_performance.render import auditor_render_check as auditor_render_check  # the render hook

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """``performance.metrics``."""
    return [PerformanceMetrics]

