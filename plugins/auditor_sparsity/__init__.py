"""Built-in plugin ``sparsity``: what a model's weights say about it, and what its activations add.

Checks: ``sparsity.profile``, ``sparsity.filters``, ``sparsity.conditioning`` (weights only, streamed tensor by
tensor, memory-mapped for external data) and ``sparsity.activations`` (needs data).
"""

from __future__ import annotations

from auditor import Check, hookimpl
from auditor_sparsity.activations import Activations
from auditor_sparsity.conditioning import Conditioning
from auditor_sparsity.filters import DegenerateFilters
from auditor_sparsity.profile import SparsityProfile

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """``sparsity.profile``, ``sparsity.filters``, ``sparsity.conditioning``, ``sparsity.activations``."""
    return [SparsityProfile, DegenerateFilters, Conditioning, Activations]
