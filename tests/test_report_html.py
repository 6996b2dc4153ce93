"""The HTML report: generic plots chosen by metric shape, the page itself (summary first, a section per check,
self-contained), plugin renderers, the matplotlib-less fallback, and a real render in headless Chromium."""

from __future__ import annotations

import html as htmllib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from builders import blobs, mlp_numpy, mlp_weights, write_mlp
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, confusion_matrix

from auditor import hookimpl
from auditor.cli import main
from auditor.plugins import build_registry
from auditor.report.html import HtmlReporter, fmt
from auditor.report.plots import Plot, as_number, figure_svg, plot_table, plots_for, render_svg
from auditor.results import AuditReport
from auditor.testing import run_audit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# ------------------------------------------------------------------------------------- plots by shape


def by_title(plots: list[Plot]) -> dict[str, Plot]:
    return {p.title: p for p in plots}


def test_curve_of_records_is_a_line_plot_over_its_monotonic_key() -> None:
    curve = [{"sigma": s, "accuracy": 1 - s, "flip_rate": s / 2} for s in (0.0, 0.1, 0.2, 0.4)]
    # "epoch" is preferred over other monotonic keys; "nan" strings (the JSON form of NaN) are numbers.
    history = [{"loss": 3.0 - e, "epoch": e, "accuracy": "nan" if e == 1 else 0.5} for e in range(4)]
    plots = by_title(plots_for({"curve": curve, "history": history}))
    c = plots["curve"]
    assert c.kind == "line" and c.data["x_label"] == "sigma" and c.data["x"] == [0.0, 0.1, 0.2, 0.4]
    assert c.data["series"] == {"accuracy": [1.0, 0.9, 0.8, 0.6], "flip_rate": [0.0, 0.05, 0.1, 0.2]}
    assert c.data["split"] is False  # same scale: one panel
    h = plots["history"]
    assert h.data["x_label"] == "epoch" and h.data["series"]["loss"] == [3.0, 2.0, 1.0, 0.0]
    assert math.isnan(h.data["series"]["accuracy"][1])
    # loss (up to 3) and accuracy (0.5) are within 20x: one panel; a 100x gap splits them.
    wide = [{"step": i, "loss": 100.0 * (i + 1), "acc": 0.5} for i in range(3)]
    assert plots_for({"wide": wide})[0].data["split"] is True


def test_dicts_of_numbers_are_bars_and_same_scale_siblings_are_grouped() -> None:
    m = {
        "per_class_recall": {"0": 1.0, "1": 0.5, "2": 0.75},
        "predicted_share": {"a": 0.2, "b": 0.8}, "true_share": {"a": 0.5, "b": 0.5},
        "predicted_counts": {"a": 20, "b": 80},  # same keys, 100x the scale: its own chart
        "flag": {"x": True, "y": False},  # booleans are not numbers
        "single": {"x": 1.0},  # one number: nothing to compare
    }
    plots = plots_for(m)
    kinds = [(p.kind, p.title) for p in plots]
    assert kinds == [("bar", "per_class_recall"), ("bar", "predicted_share / true_share"),
                     ("bar", "predicted_counts")]
    assert plots[0].data["labels"] == ["0", "1", "2"] and plots[0].data["series"] == {
        "per_class_recall": [1.0, 0.5, 0.75]}
    assert plots[1].data["series"] == {"predicted_share": [0.2, 0.8], "true_share": [0.5, 0.5]}


def test_records_become_bar_panels_with_error_bars_from_their_intervals() -> None:
    per_group = {
        "a": {"count": 10, "accuracy": 0.8, "accuracy_ci": [0.6, 0.9], "small": True, "blocks": 1,
              "rates": {"0": 0.1, "1": 0.2}},
        "b": {"count": 30, "accuracy": 0.9, "accuracy_ci": [0.85, 0.95], "small": False, "blocks": 1,
              "rates": {"0": 0.3, "1": 0.4}},
    }
    (p,) = [q for q in plots_for({"per_group": per_group}) if q.title == "per_group"]
    assert p.kind == "bar" and p.data["labels"] == ["a", "b"] and p.data["panels"] is True
    # count and accuracy are measurements; small (bool), blocks (the same integer everywhere) are not.
    assert p.data["series"] == {"count": [10.0, 30.0], "accuracy": [0.8, 0.9]}
    assert p.data["errors"] == {"accuracy": [[0.6, 0.9], [0.85, 0.95]]}
    assert "1" not in {q.title for q in plots_for({"one": {"a": {"x": 1.0}}})}  # one record: no bars


def test_nested_records_give_bars_per_run_and_training_curves() -> None:
    runs = {
        "backprop": {"sgd": {"status": "ok", "accuracy": 0.9, "loss": [2.0, 1.0, 0.5]},
                     "adam": {"status": "ok", "accuracy": 0.92, "loss": [2.0, 0.8, 0.4]}},
        "feedback_alignment": {"sgd": {"status": "ok", "accuracy": 0.7, "loss": [2.1, 1.5, 1.2, 1.1]},
                               "adam": {"status": "not applicable", "reason": "no weights to align"}},
    }
    m = {"runs": runs, "original": {"accuracy": 0.9, "feature_rank": 10}}
    plots = by_title(plots_for(m))
    assert set(plots) == {"runs", "runs · loss"}  # a mixed record (original) stays in the table
    bars = plots["runs"].data
    assert bars["labels"] == ["backprop/sgd", "backprop/adam", "feedback_alignment/sgd", "feedback_alignment/adam"]
    assert bars["series"]["accuracy"][:3] == [0.9, 0.92, 0.7] and math.isnan(bars["series"]["accuracy"][3])
    loss = plots["runs · loss"].data
    assert loss["x"] == [1.0, 2.0, 3.0, 4.0] and loss["series"]["feedback_alignment/sgd"] == [2.1, 1.5, 1.2, 1.1]
    assert loss["series"]["backprop/sgd"][:3] == [2.0, 1.0, 0.5] and math.isnan(loss["series"]["backprop/sgd"][3])
    assert "<svg" in render_svg(plots["runs · loss"])


def test_attack_results_get_a_rates_chart() -> None:
    m = {"clean_accuracy": 0.96, "robust_accuracy": 0.76, "success_rate": 0.2083, "median_queries": 115.5,
         "n": 50, "eps": 0.03, "flip_rate": 1}  # an integer 1 is a count, not a rate
    (p,) = plots_for(m)
    assert p.kind == "bar" and p.title == "rates" and p.data["ylim"] == [0.0, 1.0] and p.data["horizontal"]
    assert p.data["labels"] == ["clean_accuracy", "robust_accuracy", "success_rate"]
    assert p.data["series"] == {"rate": [0.96, 0.76, 0.2083]}
    assert plots_for({"accuracy": 0.9, "n": 10}) == []  # one rate: the table says it


def test_matrices_are_heatmaps_labelled_by_sibling_lists() -> None:
    cm = [[5, 1, 0], [0, 4, 2], [1, 0, 7]]
    cka = [[1.0, 0.2], [0.3, 0.9], [0.1, 0.5]]
    m = {"confusion_matrix": cm, "classes": ["cat", "dog", "eel"], "tiny": [[0.5]], "ragged": [[1, 2], [3]],
         "similarity": {"cka_matrix": cka, "model_layers": ["l1", "l2", "l3"], "reference_layers": ["r1", "r2"]}}
    plots = by_title(plots_for(m))
    assert set(plots) == {"confusion_matrix", "similarity.cka_matrix"}
    c = plots["confusion_matrix"].data
    assert c["matrix"] == [[5.0, 1.0, 0.0], [0.0, 4.0, 2.0], [1.0, 0.0, 7.0]]
    assert c["rows"] == c["cols"] == ["cat", "dog", "eel"]
    k = plots["similarity.cka_matrix"].data
    assert k["rows"] == ["l1", "l2", "l3"] and k["cols"] == ["r1", "r2"] and k["matrix"] == cka


def test_intervals_and_lists() -> None:
    m = {"dp": 0.1, "eo": 0.2, "ci": {"dp": [0.05, 0.2], "eo": [0.1, 0.3]}, "auc": 0.7, "auc_ci": [0.6, 0.8],
         "class_norms": [1.5, 2.0, 0.5], "dead_unit_indices": [3, 7, 9], "long": [0.1 * i for i in range(40)]}
    plots = by_title(plots_for(m))
    iv = plots["confidence intervals"]
    assert iv.kind == "interval" and iv.data["names"] == ["auc", "dp", "eo"]
    assert iv.data["values"] == [0.7, 0.1, 0.2] and iv.data["low"] == [0.6, 0.05, 0.1]
    assert iv.data["high"] == [0.8, 0.2, 0.3]
    assert plots["class_norms"].kind == "bar" and plots["class_norms"].data["series"]["class_norms"] == [1.5, 2.0, 0.5]
    assert plots["long"].kind == "line"  # more than 30 values
    assert "dead_unit_indices" not in plots  # integers only: indices, not measurements
    assert as_number("inf") == math.inf and as_number(True) is None and as_number("x") is None


def test_svg_is_inline_with_page_unique_ids_and_its_numbers() -> None:
    cm = [[7, 1], [2, 9]]
    p = plots_for({"confusion_matrix": cm})[0]
    a, b = render_svg(p), render_svg(p)
    assert a.startswith("<svg ") and "<?xml" not in a and "DOCTYPE" not in a and "<metadata" not in a
    ids_a, ids_b = set(re.findall(r'id="([^"]+)"', a)), set(re.findall(r'id="([^"]+)"', b))
    assert ids_a and not ids_a & ids_b
    # Every internal reference points at an id of the same figure.
    for ref in re.findall(r'(?:url\(|href=")#([^)"]+)', a):
        assert ref in ids_a
    # The cell annotations are the matrix (text, not paths: searchable, checkable).
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", a)
    assert {"7", "1", "2", "9"} <= set(texts)


def test_plot_table_holds_the_plot_numbers() -> None:
    p = Plot("bar", "x", {"labels": ["a", "b"], "series": {"s": [0.25, 0.5]}, "errors": {}, "panels": False})
    t = plot_table(p)
    assert "<th>a</th><td>0.25</td>" in t and "<th>b</th><td>0.5</td>" in t


# ------------------------------------------------------------------------------------- a real audit


def _audit(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray, float]:
    """A real audit (two checks, a baseline, a gate that fails) and the independent answers."""
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w)
    base_w = mlp_weights(seed=5)
    baseline = write_mlp(tmp_path / "b.onnx", base_w)
    x, y = blobs(w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = {"baseline": {"path": str(baseline)}, "data": {"path": str(tmp_path / "d.npz"), "y": "y"},
            "checks": [{"use": "performance.metrics",
                        "gate": {"accuracy": {"min": 0.5, "max_drop": 0.0}, "log_loss": {"max": 0.001}}},
                       {"use": "bias.prediction_skew"}]}
    res = run_audit(spec, model=model, workdir=tmp_path)
    assert res.report is not None, res.error
    pred = mlp_numpy(x, w).argmax(1)
    base_acc = float(accuracy_score(y, mlp_numpy(x, base_w).argmax(1)))
    return res.doc, confusion_matrix(y, pred), pred, base_acc


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], np.ndarray, np.ndarray, float, str]:
    tmp = tmp_path_factory.mktemp("html")
    doc, cm, pred, base_acc = _audit(tmp)
    page = HtmlReporter().render(AuditReport.from_dict(doc), build_registry().pm)
    return doc, cm, pred, base_acc, page


def _section(page: str, check_id: str) -> str:
    start = page.index(f"<h2>{check_id} ")
    end = page.find("</section>", start)
    return page[start:end]


def test_page_summary_first_then_sections_with_verified_numbers(audited: Any) -> None:
    doc, cm, pred, base_acc, page = audited
    acc = cm.trace() / cm.sum()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    summary = page.index('<nav id="summary">')
    assert summary < page.index("<section")
    assert doc["status"] == "fail" and '<h1>Model audit <span class="badge b-fail">fail</span></h1>' in page
    # Gates: log_loss max 0.001 fails and is listed first; accuracy min 0.5 passes.
    nav = page[summary: page.index("</nav>")]
    assert nav.index("<code>log_loss</code>") < nav.index("<code>accuracy</code>")
    assert "Gates: 2 of 3 met" in nav
    perf = _section(page, "performance.metrics")
    # accuracy and its baseline, against scikit-learn on numpy forward passes of the same weights.
    assert f'<td class="num">{fmt(float(acc))}</td><td class="num">{fmt(base_acc)}</td>' in perf
    assert f"{fmt(float(acc) - base_acc) if acc != base_acc else '0'}" in perf
    # The confusion-matrix heatmap carries scikit-learn's counts as its cell texts.
    svg = perf[perf.index('aria-label="heatmap plot of confusion_matrix"'):]
    svg = svg[: svg.index("</svg>")]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    want = [str(v) for v in cm.ravel()]  # row-major, as drawn
    assert any(texts[i: i + len(want)] == want for i in range(len(texts))), texts
    # prediction_skew: predicted and true counts share one grouped bar chart; numbers via numpy.
    skew = _section(page, "bias.prediction_skew")
    assert "predicted_counts / true_counts (bar)" in skew
    counts = np.bincount(pred, minlength=4)
    plot = next(p for p in plots_for(doc["checks"][1]["metrics"]) if p.title.startswith("predicted_counts"))
    assert plot.data["series"]["predicted_counts"] == counts.astype(float).tolist()


def test_calibration_gets_a_reliability_diagram_with_the_baseline(audited: Any) -> None:
    from auditor_performance.render import reliability_figure

    doc, page = audited[0], audited[4]
    perf = _section(page, "performance.metrics")
    assert 'aria-label="reliability diagram of calibration_bins"' in perf and "dashed: the baseline" in perf
    assert 'aria-label="heatmap plot of confusion_matrix"' in perf  # the other metrics keep their plots
    check = doc["checks"][0]
    bins, base = check["metrics"]["calibration_bins"], check["baseline_metrics"]["calibration_bins"]
    fig = reliability_figure(bins, base)
    top, bottom = fig.axes
    filled = [b for b in bins if b["count"]]
    # Bars span their bin and rise to its accuracy; the count panel holds every bin's count.
    got = [v for p in top.patches for v in (p.get_x(), p.get_width(), p.get_height())]
    assert got == pytest.approx([v for b in filled for v in (b["lower"], b["upper"] - b["lower"], b["accuracy"])])
    assert [p.get_height() for p in bottom.patches] == [b["count"] for b in bins]
    lines = {ln.get_label(): ln for ln in top.get_lines()}
    assert list(lines["baseline"].get_xdata()) == pytest.approx([b["confidence"] for b in base if b["count"]])
    assert list(lines["mean confidence"].get_ydata()) == pytest.approx([b["accuracy"] for b in filled])


def test_baseline_is_overlaid_on_curves_and_bars(audited: Any) -> None:
    doc, page = audited[0], audited[4]
    check = doc["checks"][0]
    plots = by_title(plots_for(check["metrics"], baseline=check["baseline_metrics"]))
    recall = plots["per_class_recall"]
    assert recall.data["baseline"]["per_class_recall"] == [check["baseline_metrics"]["per_class_recall"][k]
                                                          for k in recall.data["labels"]]
    assert "baseline" not in plots["confusion_matrix"].data  # nowhere to put a second matrix
    perf = _section(page, "performance.metrics")
    svg = perf[perf.index('aria-label="bar plot of per_class_recall"'):]
    assert ">baseline<" in svg[: svg.index("</svg>")]  # its legend entry
    # A curve: the baseline's line joins only over the same x values; its numbers reach the table too.
    cur = {"curve": [{"sigma": s, "accuracy": a} for s, a in [(0.0, 0.9), (0.1, 0.7), (0.2, 0.5)]]}
    base = {"curve": [{"sigma": s, "accuracy": a} for s, a in [(0.0, 0.95), (0.1, 0.8), (0.2, 0.6)]]}
    line = plots_for(cur, baseline=base)[0]
    assert line.data["baseline"] == {"accuracy": [0.95, 0.8, 0.6]}
    assert "accuracy (baseline)" in render_svg(line) and "<td>0.8</td>" in plot_table(line)
    other = {"curve": [{"sigma": s, "accuracy": 0.5} for s in (0.0, 0.3, 0.6)]}
    assert "baseline" not in plots_for(cur, baseline=other)[0].data


def test_page_is_self_contained(audited: Any) -> None:
    page = audited[4]
    assert "<script" not in page  # nothing to run
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("#") or attr.startswith("data:"), attr
    assert "@import" not in page and "url(http" not in page and "<link rel=\"stylesheet\"" not in page
    assert "default-src 'none'" in page  # the browser may fetch nothing either
    # No data beyond the plots and tables: the raw report is not embedded.
    assert json.dumps(audited[0]["checks"][0]["metrics"]["confusion_matrix"]) not in page


def test_plugin_renders_its_own_check_and_a_broken_renderer_falls_back(audited: Any) -> None:
    doc = audited[0]

    class Renderer:
        __name__ = "renderer"

        @hookimpl
        def auditor_render_check(self, check: dict[str, Any], fmt: str) -> str | None:
            if check["use"] != "bias.prediction_skew" or fmt != "html":
                return None
            return f'<p id="mine">n={check["metrics"]["n"]}</p>'

    class Broken:
        __name__ = "broken"

        @hookimpl
        def auditor_render_check(self, check: dict[str, Any], fmt: str) -> str | None:
            raise RuntimeError("boom")

    typed = AuditReport.from_dict(doc)
    page = HtmlReporter().render(typed, build_registry(extra_plugins=[Renderer()], use_entry_points=False).pm)
    skew = _section(page, "bias.prediction_skew")
    assert f'<p id="mine">n={doc["checks"][1]["metrics"]["n"]}</p>' in skew
    assert "(bar)" not in skew  # the plugin's fragment replaces the generic plots ...
    assert "<h3>Metrics</h3>" in skew  # ... not the tables
    assert "heatmap plot of confusion_matrix" in _section(page, "performance.metrics")
    broken = HtmlReporter().render(typed, build_registry(extra_plugins=[Broken()], use_entry_points=False).pm)
    perf = _section(broken, "performance.metrics")
    assert "the plugin&#x27;s renderer failed (RuntimeError: boom)" in perf
    assert "heatmap plot of confusion_matrix" in perf


def test_without_matplotlib_the_page_has_tables_and_a_note(audited: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    doc, cm = audited[0], audited[1]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = HtmlReporter().render(AuditReport.from_dict(doc))
    assert "matplotlib is not installed" in page and "<svg" not in page
    perf = _section(page, "performance.metrics")
    first_row = "".join(f"<td>{v}</td>" for v in cm[0])
    assert first_row in perf  # the heatmap's numbers as a table


def test_errors_skips_and_interrupts_render(tmp_path: Path) -> None:
    doc = {"status": "error", "interrupted": True, "model": {"path": "m<1>.onnx"}, "summary": {"error": 1},
           "environment": {}, "checks": [
               {"id": "a<b>", "use": "x.y", "plugin": "x", "status": "error", "params": {}, "metrics": {},
                "gates": [], "findings": [], "notes": [], "duration_s": 0.1, "error": "ValueError: <bad>"},
               {"id": "s", "use": "x.z", "plugin": "x", "status": "skipped", "params": {}, "metrics": {},
                "gates": [{"metric": "m", "op": "min", "threshold": 1, "value": None, "baseline": None,
                           "status": "fail", "severity": "fail", "message": "m: not evaluated (check skipped)"}],
                "findings": [{"message": "look", "severity": "warn", "location": "fc1"}], "notes": [],
                "duration_s": 0.0, "skip_reason": "needs labels"}]}
    page = HtmlReporter().render(AuditReport.from_dict(doc))
    assert "Error: ValueError: &lt;bad&gt;" in page and "<bad>" not in page and "m&lt;1&gt;.onnx" in page
    assert "Skipped: needs labels" in page and "this report is partial" in page
    assert "not evaluated (check skipped)" in page and "Gates: 0 of 1 met" in page
    assert htmllib.escape("a<b>") in page and 'id="check-0-a-b"' in page


def test_cli_writes_report_html(tmp_path: Path) -> None:
    w = mlp_weights()
    model = write_mlp(tmp_path / "m.onnx", w)
    x, y = blobs(w=w)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(model)},
                                    "data": {"path": str(tmp_path / "d.npz"), "y": "y"},
                                    "checks": [{"use": "performance.metrics"}],
                                    "report": {"dir": str(tmp_path / "r"), "formats": ["json", "html"]}}))
    r = CliRunner().invoke(main, ["run", str(spec), "-q"])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r" / "report.html").read_text()
    acc = accuracy_score(y, mlp_numpy(x, w).argmax(1))
    assert f'<td><code>accuracy</code></td><td class="num">{fmt(float(acc))}</td>' in page


def test_figure_svg_for_plugin_authors() -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    svg = figure_svg(fig, label="my plot")
    assert svg.startswith('<svg role="img" aria-label="my plot"')


# ------------------------------------------------------------------------------------- headless Chromium

ERROR_HOOK = """<script>
window.__errors = [];
function __keep(m) { window.__errors.push(String(m));
  document.documentElement.setAttribute('data-errors', JSON.stringify(window.__errors)); }
window.addEventListener('error', function (e) { __keep('error: ' + (e.message || (e.target && e.target.src))); }, true);
document.addEventListener('securitypolicyviolation', function (e) { __keep('csp: ' + e.blockedURI); });
var __ce = console.error; console.error = function () { __keep('console: ' + Array.from(arguments).join(' '));
  __ce.apply(console, arguments); };
window.addEventListener('load', function () { document.documentElement.setAttribute('data-loaded', '1'); });
</script>"""


def _chromium(tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=3000", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})


def _page_errors(tmp_path: Path, page_text: str, name: str) -> list[str]:
    """Load the page with an error hook injected first in <head>; the hook writes what it caught into the DOM,
    read back with --dump-dom. Console errors logged to stderr count too."""
    hooked = page_text.replace("<head>", "<head>" + ERROR_HOOK, 1)
    # The hook is an inline script: allowed by the page's policy ('unsafe-inline').
    path = tmp_path / name
    path.write_text(hooked)
    r = _chromium(tmp_path, path, "--dump-dom")
    assert 'data-loaded="1"' in r.stdout, r.stderr[-2000:]
    m = re.search(r"data-errors=\"([^\"]*)\"", r.stdout)
    errors = json.loads(htmllib.unescape(m.group(1))) if m else []
    errors += [line for line in r.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)]
    return errors


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_chromium_renders_the_page_without_errors(audited: Any, tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    page = audited[4]
    out = tmp_path / "report.html"
    out.write_text(page)
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, out, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.exists(), r.stderr[-2000:]
    img = np.asarray(pil.open(shot).convert("L"), dtype=float)
    assert img.shape == (2000, 1280)
    # Non-trivial: text, tables and plots give many distinct grey levels and dark pixels in every band.
    assert len(np.unique(img)) > 50
    for band in np.array_split(img, 4):
        assert (band < 128).mean() > 0.002
    assert _page_errors(tmp_path, page, "hooked.html") == []
    # The hook is not blind: a page with a script error and an external image reports both.
    bad = page.replace("</main>", '<img src="https://example.invalid/x.png"><script>notDefined();</script></main>')
    errors = _page_errors(tmp_path, bad, "bad.html")
    assert any("notDefined" in e for e in errors) and any("example.invalid" in e for e in errors)
