"""Built-in plugin ``transfer``: how a model relates to other models and to a new task.

Checks: ``transfer.similarity`` (CKA, RSA, agreement, complementary knowledge), ``transfer.transferability``
(LogME, LEEP, NCE, H-score, linear probe), ``transfer.attribution_distance`` (occlusion or gradient × input
maps) and ``transfer.filter_shift`` (3×3 filter distributions per depth). Reference models come from the
spec's ``reference:`` / ``references:``.
"""

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

