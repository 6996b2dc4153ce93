"""The plugin contract. Every hook is typed; its docstring is the contract.

Registration hooks return classes or factories; checks are never run as hook implementations (in pluggy one
raising implementation would stop the whole hook call), the runner calls each check in its own ``try``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from auditor.checks import Check
    from auditor.report.base import Reporter
    from auditor.results import CheckReport

hookspec = pluggy.HookspecMarker("auditor")


@hookspec
def auditor_register_checks() -> list[type[Check]]:
    """Return the :class:`~auditor.Check` subclasses this plugin provides.

    Each class's ``name`` (``"<plugin>.<check>"``) must be unique among installed plugins; a clash stops the
    run naming both plugins.
    """
    raise NotImplementedError


@hookspec
def auditor_register_reporters() -> list[type[Reporter]]:
    """Return :class:`~auditor.report.base.Reporter` subclasses: report formats selectable with
    ``report.formats`` / ``--format`` by their ``format`` name."""
    raise NotImplementedError


@hookspec
def auditor_register_backends() -> dict[str, Callable[..., Any]]:
    """Return ``{name: factory}``; ``factory(model_handle)`` builds a backend object for a model (e.g.
    ``"torch"``: a differentiable module with gradients). Checks reach them with ``ctx.backend(name)`` and are
    skipped with a reason when no plugin provides the backend."""
    raise NotImplementedError


@hookspec(firstresult=True)
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """Render one check's section for report format ``fmt`` (e.g. an HTML plot); ``None`` to let the
    reporter fall back to its generic table. The first non-``None`` answer wins."""
    raise NotImplementedError
