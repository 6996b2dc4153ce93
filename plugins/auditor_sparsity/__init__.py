"""Built-in plugin ``sparsity`` (being written; registers its checks as they land)."""

from __future__ import annotations

from auditor import Check, hookimpl

__version__ = "0.1.0"


@hookimpl
def auditor_register_checks() -> list[type[Check]]:
    """The checks of this plugin."""
    return []
