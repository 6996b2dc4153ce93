"""Built-in plugin ``bias``: who a model fails, and whether it leans on cues it should not.

Checks: ``bias.group_metrics`` (per-group rates and Fairlearn-compatible disparities with bootstrap
intervals), ``bias.shortcut`` (counterfactual cues), ``bias.leakage`` (linear probe on the sensitive
attribute), ``bias.prediction_skew`` (predicted vs true class histogram).
"""

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

