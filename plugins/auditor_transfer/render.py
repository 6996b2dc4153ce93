"""The HTML figures of ``transfer.similarity``: per layer of the model, how similar its best-matching layer of
each reference is (the row maxima of the CKA and RSA layer matrices, the matching layer written at each point),
the line a person reads to see where two networks diverge; then the generic plots (the CKA heatmap among
them)."""

from __future__ import annotations

import math
from typing import Any

from auditor import CheckReport, hookimpl
from auditor.report.plots import designed_section, new_figure

CHECK = "transfer.similarity"


def _matrix(v: Any) -> list[list[float]] | None:
    if not isinstance(v, list) or not v or not all(isinstance(r, list) and r for r in v):
        return None
    try:
        rows = [[float(x) if x is not None else math.nan for x in r] for r in v]
    except (TypeError, ValueError):
        return None
    return rows if len({len(r) for r in rows}) == 1 else None


def best_match(matrix: list[list[float]]) -> tuple[list[float], list[int]]:
    """Per row (model layer): the largest similarity over the columns (reference layers) and its column."""
    best = [max(((x, j) for j, x in enumerate(row) if math.isfinite(x)), default=(math.nan, -1)) for row in matrix]
    return [x for x, _ in best], [j for _, j in best]


def references(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-reference metrics holding layer matrices (``by_reference``, or the top level for one)."""
    by_ref = metrics.get("by_reference")
    if isinstance(by_ref, dict) and by_ref:
        return {str(k): v for k, v in by_ref.items() if isinstance(v, dict) and _matrix(v.get("cka_matrix"))}
    return {"reference": metrics} if _matrix(metrics.get("cka_matrix")) else {}


def layer_figure(metrics: dict[str, Any]) -> Any:
    """A matplotlib figure: x the model's layers in order, y the best CKA (solid) and RSA (dashed) with any layer
    of each reference, the best-matching reference layer written at each CKA point. ``None`` without layer
    matrices (penultimate-only runs)."""
    refs = references(metrics)
    if not refs:
        return None
    first = next(iter(refs.values()))
    layers = [str(x) for x in first.get("model_layers") or []]
    n = len(_matrix(first["cka_matrix"]) or [])
    layers = layers if len(layers) == n else [str(i) for i in range(n)]
    fig = new_figure(7.0, 3.4)
    ax = fig.subplots()
    xs = list(range(n))
    for name, rec in refs.items():
        cka = _matrix(rec.get("cka_matrix")) or []
        best, where = best_match(cka)
        line = ax.plot(xs[:len(best)], best, "o-", ms=4, label=f"CKA, best layer of {name}")[0]
        cols = [str(x) for x in rec.get("reference_layers") or []]
        for x, y, j in zip(xs, best, where):
            if j >= 0 and j < len(cols) and n <= 16:
                ax.annotate(cols[j][-14:], (x, y), textcoords="offset points", xytext=(0, 5), fontsize=6,
                            ha="center", color=line.get_color())
        rsa = _matrix(rec.get("rsa_matrix"))
        if rsa is not None and len(rsa) == n:
            ax.plot(xs, best_match(rsa)[0], "s--", ms=3, color=line.get_color(), alpha=0.7,
                    label=f"RSA, best layer of {name}")
    ax.set_xticks(xs)
    ax.set_xticklabels([s[-16:] for s in layers], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                       fontsize=7)
    ax.set_xlabel("model layer (input to output)")
    ax.set_ylabel("similarity")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


@hookimpl
def auditor_render_check(check: CheckReport, fmt: str) -> str | None:
    """The per-layer similarity line above the generic plots for ``transfer.similarity`` in HTML."""
    if check.use != CHECK or fmt != "html":
        return None
    fig = layer_figure(check.metrics)
    if fig is None:
        return None
    caption = ("per model layer: the highest CKA (and RSA) with any layer of the reference, the matching layer "
               "written above each point")
    return designed_section(check, fig, label="line plot of per-layer best-match similarity", caption=caption)
