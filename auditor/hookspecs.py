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
    from auditor.datasets.registry import DataSource
    from auditor.report.base import Reporter

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


@hookspec
def auditor_register_datasets() -> list[type[DataSource]]:
    """Return :class:`~auditor.datasets.registry.DataSource` subclasses: new kinds of ``data.path`` (e.g.
    WebDataset shards). Each ``name`` must be unique (a clash stops the run naming both plugins); a spec selects
    one with ``data.format: <name>``, or the first whose ``claims(cfg)`` accepts the section is used (plugins
    before the built-in sources). ``load(cfg, request)`` returns an :class:`~auditor.data.Dataset` whose ``x``
    may be a lazy :class:`~auditor.datasets.sources.ArraySource`, so data larger than memory streams."""
    raise NotImplementedError


@hookspec(firstresult=True)
def auditor_render_check(check: dict[str, Any], fmt: str) -> str | None:
    """Render the plots of one check for report format ``fmt`` (``"html"``); ``None`` to let the reporter
    fall back to its generic plots. The first non-``None`` answer wins, so answer only for your own checks
    (``check["use"]``).

    ``check`` is the check's JSON dict from the report (``id``, ``use``, ``status``, ``metrics``,
    ``baseline_metrics``, ``gates``, ``findings``, ...), the same data every format renders. For ``"html"``
    return an HTML fragment; it replaces the generic plots only: the heading, gates, findings and metric
    tables are still written by the reporter. The page forbids fetching anything (Content-Security-Policy),
    so inline everything: :func:`auditor.report.plots.figure_svg` turns a matplotlib figure into inline SVG.
    A renderer that raises is reported on the page and the generic plots are shown instead.
    """
    raise NotImplementedError
