"""Built-in plugin ``transfer``: how a model relates to other models (the spec's ``reference:`` / ``references:``)
and to a new task."""

from __future__ import annotations

from auditor import Check, hookimpl
from auditor_transfer.attribution import AttributionDistance
from auditor_transfer.filters import FilterShift
from auditor_transfer.render import auditor_render_check as auditor_render_check  # the render hook
from auditor_transfer.similarity import Similarity
from auditor_transfer.transferability import Transferability

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The checks of this plugin."""
    return [Similarity, Transferability, AttributionDistance, FilterShift]

