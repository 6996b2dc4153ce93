"""The designed figures of the bias and transfer plugins (through their ``auditor_render_check`` hooks), drawn
from a real audit: every point, interval and gate read back from the matplotlib figure is the report's number,
recomputed independently where it is derived (row maxima of the layer matrices with numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from auditor_bias.render import DISPARITIES, forest_figure
from auditor_transfer.render import layer_figure
from builders import grouped_mlp_audit

from auditor.plugins import build_registry
from auditor.report.html import HtmlReporter
from auditor.results import AuditReport
from auditor.testing import run_audit


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditReport, str]:
    tmp = tmp_path_factory.mktemp("renderers")
    spec = {**grouped_mlp_audit(tmp),
            "checks": [{"use": "transfer.similarity", "with": {"layers": "all"}},
                       {"use": "bias.group_metrics", "with": {"bootstrap": 20},
                        "gate": {"demographic_parity_difference": {"max": 0.3},
                                 "accuracy_difference": {"max_drop": 0.1}}}]}
    res = run_audit(spec, model=tmp / "m.onnx", workdir=tmp)
    assert res.report is not None, res.error
    report = AuditReport.from_dict(res.doc)  # what report.json holds
    return report, HtmlReporter().render(report, build_registry().pm)


def _container(ax: Any) -> Any:
    from matplotlib.container import ErrorbarContainer

    return next(c for c in ax.containers if isinstance(c, ErrorbarContainer))


def _spans(container: Any) -> list[tuple[float, float]]:
    return [(float(s[0][0]), float(s[1][0])) for s in container.lines[2][0].get_segments()]


def test_group_forest_plot_carries_accuracies_intervals_baseline_and_gates(audited: Any) -> None:
    report, page = audited
    c = report.check("bias.group_metrics")
    m = c.metrics
    groups = list(m["per_group"])
    fig = forest_figure(c)
    left, right = fig.axes[:2]
    bars = _container(left)
    assert list(bars.lines[0].get_xdata()) == pytest.approx([m["per_group"][g]["accuracy"] for g in groups])
    for (lo, hi), g in zip(_spans(bars), groups):  # the interval, widened to reach its point where it does not
        r = m["per_group"][g]
        assert (lo, hi) == pytest.approx((min(r["accuracy_ci"][0], r["accuracy"]), max(r["accuracy_ci"][1],
                                                                                           r["accuracy"])))
    assert [t.get_text() for t in left.get_yticklabels()] == [f"{g} (n={m['per_group'][g]['count']})"
                                                             for g in groups]
    base = next(ln for ln in left.get_lines() if ln.get_label() == "baseline")
    assert list(base.get_xdata()) == pytest.approx([c.baseline_metrics["per_group"][g]["accuracy"] for g in groups])
    disp = [k for k in DISPARITIES if isinstance(m.get(k), float)]
    assert [t.get_text() for t in right.get_yticklabels()] == disp and len(disp) >= 4
    d = _container(right)
    assert list(d.lines[0].get_xdata()) == pytest.approx([m[k] for k in disp])
    with_ci = [k for k in disp if k in m["ci"]]
    spans = dict(zip(disp, _spans(d)))
    for k in with_ci:
        lo, hi = m["ci"][k]
        assert spans[k] == pytest.approx((min(lo, m[k]), max(hi, m[k])))
    # the gate bar at its threshold on its row; a max_drop bound (a change, not a place) is not drawn
    gate = next(ln for ln in right.get_lines() if ln.get_label() == "gate")
    assert list(gate.get_xdata()) == [0.3] and list(gate.get_ydata()) == [disp.index("demographic_parity_difference")]
    assert 'aria-label="forest plot of per_group and disparities"' in page


def test_layer_similarity_line_is_the_best_match_per_model_layer(audited: Any) -> None:
    report, page = audited
    m = report.metrics("transfer.similarity")
    cka, rsa = np.asarray(m["cka_matrix"], float), np.asarray(m["rsa_matrix"], float)
    assert cka.shape[0] >= 2
    fig = layer_figure(m)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    name = next(iter(m["by_reference"]))
    assert list(lines[f"CKA, best layer of {name}"].get_ydata()) == pytest.approx(cka.max(axis=1))
    assert list(lines[f"RSA, best layer of {name}"].get_ydata()) == pytest.approx(rsa.max(axis=1))
    assert [t.get_text() for t in ax.texts] == [m["reference_layers"][j][-14:] for j in cka.argmax(axis=1)]
    assert [t.get_text() for t in ax.get_xticklabels()] == [s[-16:] for s in m["model_layers"]]
    assert 'aria-label="line plot of per-layer best-match similarity"' in page
    assert 'aria-label="heatmap plot of cka_matrix"' in page  # the matrix itself is still drawn
