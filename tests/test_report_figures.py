"""The HTML report's figures for layer similarity, weight conditioning and group fairness, drawn from a real
audit: each figure carries the check's own numbers (bar heights, error bars, heatmap cells read back from the
matplotlib figure and the SVG)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from builders import blobs, mlp_weights, write_mlp

from auditor.plugins import build_registry
from auditor.report.html import HtmlReporter
from auditor.report.plots import Plot, plots_for, render_figure
from auditor.results import AuditReport
from auditor.testing import run_audit


@pytest.fixture(scope="module")
def figures_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("figures")
    w = mlp_weights()
    write_mlp(tmp / "m.onnx", w)
    write_mlp(tmp / "b.onnx", mlp_weights(seed=5))
    x, y = blobs(w=w)
    np.savez(tmp / "d.npz", x=x, y=y, site=np.where(np.arange(len(y)) % 3 == 0, "a", "b"))
    spec = {"baseline": {"path": str(tmp / "b.onnx")}, "references": {"r": {"path": str(tmp / "b.onnx")}},
            "data": {"path": str(tmp / "d.npz"), "y": "y", "groups": ["site"]},
            "checks": [{"use": "performance.metrics"}, {"use": "transfer.similarity", "with": {"layers": "all"}},
                       {"use": "sparsity.profile"}, {"use": "sparsity.conditioning"},
                       {"use": "bias.group_metrics", "with": {"bootstrap": 20}}]}
    res = run_audit(spec, model=tmp / "m.onnx", workdir=tmp)
    assert res.report is not None, res.error
    return res.doc, HtmlReporter().render(AuditReport.from_dict(res.doc), build_registry().pm)


def _check(doc: dict[str, Any], use: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["use"] == use)


def _plot(check: dict[str, Any], title: str) -> Plot:
    return next(p for p in plots_for(check["metrics"], baseline=check.get("baseline_metrics")) if p.title == title)


def test_cka_layer_matrix_is_a_labelled_heatmap(figures_audit: Any) -> None:
    doc, page = figures_audit
    m = _check(doc, "transfer.similarity")["metrics"]
    p = _plot(_check(doc, "transfer.similarity"), "cka_matrix")
    assert p.kind == "heatmap" and len(m["cka_matrix"]) >= 2
    assert p.data["matrix"] == m["cka_matrix"]
    assert (p.data["rows"], p.data["cols"]) == (m["model_layers"], m["reference_layers"])
    fig = render_figure(p)
    assert np.allclose(np.asarray(fig.axes[0].images[0].get_array()), m["cka_matrix"])
    # The page's SVG writes every cell's value (row-major).
    svg = page[page.index('aria-label="heatmap plot of cka_matrix"'):]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg[: svg.index("</svg>")])
    want = [f"{v:.2g}" for row in m["cka_matrix"] for v in row]
    assert any(texts[i: i + len(want)] == want for i in range(len(texts))), texts


def test_per_layer_sparsity_and_conditioning_bars(figures_audit: Any) -> None:
    doc, page = figures_audit
    cond = _check(doc, "sparsity.conditioning")
    p = _plot(cond, "layers")
    layers = cond["metrics"]["layers"]
    assert p.data["labels"] == list(layers)
    fig = render_figure(p)
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("condition_number"))
    assert [b.get_height() for b in panel.patches] == pytest.approx([r["condition_number"] for r in layers.values()])
    # The baseline's per-layer values are overlaid, one tick per bar.
    tick = next(ln for ln in panel.get_lines() if ln.get_label() == "baseline")
    base = cond["baseline_metrics"]["layers"]
    assert list(tick.get_ydata()) == pytest.approx([base[k]["condition_number"] for k in layers])
    prof = _check(doc, "sparsity.profile")
    sp = _plot(prof, "weights")
    fig = render_figure(sp)
    panel = next(ax for ax in fig.axes if ax.get_title() == "sparsity")
    assert [b.get_height() for b in panel.patches] == pytest.approx(
        [r["sparsity"] for r in prof["metrics"]["weights"].values()])
    assert 'aria-label="bar plot of layers"' in page and 'aria-label="bar plot of weights"' in page


def test_values_orders_of_magnitude_apart_get_a_log_axis() -> None:
    p = Plot("bar", "layers", {"labels": ["a", "b"], "series": {"condition_number": [2.0, 5e4], "rank": [3.0, 4.0]},
                               "errors": {}, "panels": True})
    fig = render_figure(p)
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_visible()}
    assert scales == {"condition_number (log scale)": "log", "rank": "linear"}


def test_group_metrics_bars_carry_their_bootstrap_intervals(figures_audit: Any) -> None:
    doc, page = figures_audit
    g = _check(doc, "bias.group_metrics")
    per_group = g["metrics"]["per_group"]
    p = _plot(g, "per_group")
    fig = render_figure(p)
    panel = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    from matplotlib.container import BarContainer

    bars = next(c for c in panel.containers if isinstance(c, BarContainer))
    assert [b.get_height() for b in bars.patches] == pytest.approx([r["accuracy"] for r in per_group.values()])
    # The error bar of each group spans its bootstrap interval.
    segments = bars.errorbar.lines[2][0].get_segments()
    spans = [(float(s[0][1]), float(s[1][1])) for s in segments]
    assert np.allclose(spans, [r["accuracy_ci"] for r in per_group.values()])
    assert all(lo <= r["accuracy"] <= hi for (lo, hi), r in zip(spans, per_group.values()))
    assert 'aria-label="bar plot of per_group"' in page
