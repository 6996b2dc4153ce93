"""The plugin contract. Every hook is typed; its docstring is the contract.

Registration hooks return classes or factories; checks are never run as hook implementations (in pluggy one
raising implementation would stop the whole hook call), the runner calls each check in its own ``try``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import pluggy

if TYPE_CHECKING:
    from auditor.checks import Check
    from auditor.datasets.registry import DataSource
    from auditor.model import ModelHandle
    from auditor.report.base import Reporter
    from auditor.results import CheckReport

#: The capability of a backend that computes input gradients (what ``Need.GRADIENTS`` asks for).
GRADIENTS = "gradients"

_F = TypeVar("_F", bound=Callable[..., Any])


@runtime_checkable
class GradientBackend(Protocol):
    """What a backend offering :data:`GRADIENTS` returns for a model (any model: the audited one, a
    reference, the baseline). Both calls are batched."""

    def forward(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """The audited output for ``x``, without gradients."""
        ...

    def input_gradients(self, x: np.ndarray, targets: np.ndarray, *, of: str = "logit",
                        batch_size: int | None = None,
                        inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """d score(target) / d x for each row (``of``: ``logit``, ``prob`` or ``loss``), shaped like ``x``.
        ``inputs``: the model's other per-sample inputs (batch-first, one row per row of ``x``), held fixed;
        callers pass it only when there are some, so a backend for one-input models may leave it out."""
        ...


#: ``factory(model_handle)`` -> a backend object for that model.
BackendFactory = Callable[["ModelHandle"], Any]


def offers(*capabilities: str) -> Callable[[_F], _F]:
    """Mark a backend factory with the capabilities it offers (``@offers(GRADIENTS)``): checks that need
    one reach the backend through the capability, not the plugin's name."""

    def mark(factory: _F) -> _F:
        factory.capabilities = frozenset(capabilities)  # type: ignore[attr-defined]
        return factory

    return mark


def capabilities_of(factory: Any) -> frozenset[str]:
    """What a backend factory offers (see :func:`offers`)."""
    caps: object = getattr(factory, "capabilities", frozenset())
    return frozenset(caps) if isinstance(caps, (set, frozenset, list, tuple)) else frozenset()

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
def auditor_register_backends() -> dict[str, BackendFactory]:
    """Return ``{name: factory}``; ``factory(model_handle)`` builds a backend object for a model (e.g.
    ``"torch"``: a differentiable module with gradients). Mark a factory with :func:`offers` to say what it
    provides: a factory offering :data:`GRADIENTS` returns a :class:`GradientBackend`, and checks needing
    ``Need.GRADIENTS`` reach it with ``ctx.gradients(model)``. A named backend is reached with
    ``ctx.backend(name)``; both skip the check with a reason when no plugin provides it. Two plugins
    registering the same name stop the run naming both."""
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
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """Render the plots of one check for report format ``fmt`` (``"html"``); ``None`` to let the reporter
    fall back to its generic plots. The first non-``None`` answer wins, so answer only for your own checks
    (``check.use``).

    ``check`` is the typed :class:`~auditor.results.CheckReport` from the report (``id``, ``use``, ``status``,
    ``metrics``, ``baseline_metrics``, ``gates``, ``findings``, ...; ``check.metric("a.b")`` reads a dotted
    metric), the same data every format renders. Renderers written for the JSON dict of earlier versions keep
    working: ``check["metrics"]`` and ``check.get("baseline_metrics")`` read the check's JSON form. For
    ``"html"`` return an HTML fragment; it replaces the generic plots only: the heading, gates, findings and
    metric tables are still written by the reporter. The page forbids fetching anything
    (Content-Security-Policy), so inline everything: :func:`auditor.report.plots.figure_svg` turns a matplotlib
    figure into inline SVG. A renderer that raises is reported on the page and the generic plots are shown
    instead.
    """
    raise NotImplementedError
