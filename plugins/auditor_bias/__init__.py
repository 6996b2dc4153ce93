"""Built-in plugin ``bias``: who a model fails, and whether it leans on cues it should not."""

from __future__ import annotations

from auditor import Check, hookimpl
from auditor_bias.group_metrics import GroupMetrics
from auditor_bias.leakage import Leakage
from auditor_bias.render import auditor_render_check as auditor_render_check  # the render hook
from auditor_bias.shortcut import Shortcut
from auditor_bias.skew import PredictionSkew

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The checks of this plugin."""
    return [GroupMetrics, Shortcut, Leakage, PredictionSkew]

