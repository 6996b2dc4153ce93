"""The HTML report's figures for layer similarity, weight conditioning and group fairness, drawn from a real
audit: each figure carries the check's own numbers (bar heights, error bars, heatmap cells read back from the
matplotlib figure and the SVG)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import grouped_mlp_audit

from auditor.plugins import build_registry
from auditor.report.html import HtmlReporter
from auditor.report.plots import Plot, plots_for, render_figure
from auditor.results import AuditReport
from auditor.testing import run_audit


@pytest.fixture(scope="module")
def figures_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("figures")
    spec = {**grouped_mlp_audit(tmp),
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
    # on the page the bias plugin draws per_group as its forest plot (tests/test_plugin_renderers.py)
    assert 'aria-label="forest plot of per_group and disparities"' in page


LAYOUT_PROBE = """window.addEventListener('error', function (e) { window.__e.push(String(e.message)); });
window.__e = [];
window.addEventListener('load', function () {
  var w = document.documentElement.clientWidth, wide = [];
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right > w + 1 || r.left < -1) { wide.push(el.tagName + '#' + el.id + ' ' + Math.round(r.width)); }
  });
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({wide: wide, errors: window.__e, width: w});
  document.body.appendChild(out);
});"""


def test_chromium_layout_no_element_wider_than_the_viewport(figures_audit: Any, tmp_path: Path) -> None:
    import base64
    import hashlib
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    page = figures_audit[1]
    # The test copy only: the policy allows exactly this script (by its hash) and nothing else inline.
    digest = base64.b64encode(hashlib.sha256(LAYOUT_PROBE.encode()).digest()).decode()
    assert "script-src 'unsafe-inline'" in page
    hooked = page.replace("script-src 'unsafe-inline'", f"script-src 'sha256-{digest}'", 1)
    hooked = hooked.replace("<head>", f"<head><script>{LAYOUT_PROBE}</script>", 1)
    probe = _probe(chromium, tmp_path, hooked, "page.html")
    assert probe["width"] > 0 and probe["errors"] == [] and probe["wide"] == []
    # The probe is not blind: an element wider than the page is listed.
    bad = _probe(chromium, tmp_path, hooked.replace("</main>", '<div id="wide" style="width:3000px">x</div></main>'),
                 "bad.html")
    assert any(w.startswith("DIV#wide") for w in bad["wide"])


def _probe(chromium: str, tmp_path: Path, text: str, name: str) -> dict[str, Any]:
    import html as htmllib
    import json
    import os
    import subprocess

    out = tmp_path / name
    out.write_text(text)
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,1000",
                        "--virtual-time-budget=3000", "--dump-dom", out.as_uri()],
                       capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)})
    m = re.search(r'<pre id="probe">([^<]*)</pre>', r.stdout)
    assert m, r.stderr[-2000:]
    probe: dict[str, Any] = json.loads(htmllib.unescape(m.group(1)))
    return probe
