"""``report.html``: one self-contained page for people: a summary of gates first, then a section per check
with its plots, gates, findings and scalar metrics.

Self-contained means: styles inline, plots as inline SVG (fonts drawn as paths), no scripts, no external
URLs; a Content-Security-Policy forbids the browser to fetch anything, so a plugin's fragment cannot either.
Only what the tables and plots show is embedded (not the raw report, not the data).

A plugin draws its own check's plots through the ``auditor_render_check(check, fmt="html")`` hook (``check``
is the typed :class:`~auditor.results.CheckReport`); checks without a plugin renderer get their example gallery
(:mod:`auditor.report.gallery`) and generic plots chosen by the shape of their metrics
(:mod:`auditor.report.plots`). Without matplotlib (the ``html`` extra) the page still renders, with
the plots' numbers as tables and a one-line note.
"""

from __future__ import annotations

import html
import re
from typing import Any

from auditor.metrics import format_value, get, scalars
from auditor.report.base import Reporter
from auditor.report.gallery import CSS as GALLERY_CSS
from auditor.report.gallery import gallery_section
from auditor.report.markdown import headline
from auditor.report.plots import Plot, matplotlib_available, plot_table, plots_for, render_svg
from auditor.results import AuditReport, CheckReport, GateResult

STATUSES = ("pass", "info", "warn", "fail", "error", "skipped")
MAX_METRIC_ROWS = 200

CSS = """
:root { --pass:#1a7f37; --warn:#9a6700; --fail:#cf222e; --error:#82071e; --skipped:#6e7781; --line:#d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:#1f2328; margin:0;
       background:#f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; overflow-wrap: anywhere; }
h1 { font-size: 24px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 0 0 6px; }
h3 { font-size: 14px; margin: 16px 0 6px; color:#424a53; }
section, header, footer, nav { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 20px;
                               margin-bottom:16px; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background:#f6f8fa; font-weight:600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data td { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; color:#fff; font-size:12px; font-weight:600;
         text-transform: uppercase; letter-spacing: .03em; }
.b-pass { background:var(--pass); } .b-warn { background:var(--warn); } .b-fail { background:var(--fail); }
.b-error { background:var(--error); } .b-skipped { background:var(--skipped); } .b-info { background:#0969da; }
tr.s-fail td, tr.s-error td { background:#ffebe9; } tr.s-warn td { background:#fff8c5; }
.meta { color:#59636e; } .meta code { color:#1f2328; }
.note { background:#ddf4ff; border:1px solid #54aeff; padding:6px 10px; border-radius:6px; }
.alert { background:#ffebe9; border:1px solid #ff8182; padding:6px 10px; border-radius:6px; }
.counts span { margin-right: 14px; }
figure { margin: 8px 0 12px; } figure svg { max-width: 100%; height: auto; }
figcaption { color:#59636e; font-size: 12px; }
ul.findings li { margin: 2px 0; }
details summary { cursor: pointer; color:#0969da; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.scroll { max-width: 100%; overflow-x: auto; }
section table td, section table th, nav table td, nav table th, header table td { overflow-wrap: anywhere; }
table.meta code { word-break: break-all; }
pre { white-space: pre-wrap; background:#f6f8fa; padding:8px; border-radius:6px; }
""" + GALLERY_CSS

# Nothing may be fetched: no network, no file next to the report. Inline styles, inline SVG and data: images
# (matplotlib embeds heatmap rasters as data: PNG) only; inline scripts for plugin fragments that need them.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "font-src data:")


def esc(v: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(v), quote=True)


def fmt(v: Any) -> str:
    """Short text for a scalar value (4 significant digits for floats)."""
    return format_value(v)


def badge(status: str) -> str:
    """A coloured status label."""
    return f'<span class="badge b-{esc(status)}">{esc(status)}</span>'


def anchor(index: int, check_id: str) -> str:
    """A stable, unique element id for a check's section."""
    return f"check-{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", check_id).strip("-")


def flatten(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """Scalar metrics as ``(dotted.name, value)`` rows: nested dicts are expanded (three levels), short lists
    of scalars shown inline; long lists, lists of dicts and matrices are left to the plots."""
    return scalars(metrics, max_depth=3, inline_lists=12)


def change(v: Any, b: Any) -> str:
    """``v - b`` with a sign, for two numbers (not booleans); empty otherwise."""
    if isinstance(v, bool) or isinstance(b, bool) or not isinstance(v, (int, float)) or not isinstance(b, (int, float)):
        return ""
    d = v - b
    return "0" if d == 0 else f"{d:+.4g}"


class HtmlReporter(Reporter):
    """One self-contained HTML page (see the module docstring)."""

    format = "html"
    filename = "report.html"

    def render(self, report: AuditReport, pm: Any = None) -> str:
        """The page's text."""
        checks = report.checks
        can_plot = matplotlib_available()
        title = f"Model audit: {report.status.value.upper()} · {report.model.get('path', '')}"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
            self._header(report, can_plot),
            self._summary(report),
        ]
        for i, c in enumerate(checks):
            parts.append(self._check(i, c, pm, can_plot))
        parts.append(self._footer(report))
        parts.append("</main></body></html>\n")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------------- parts
    def _header(self, report: AuditReport, can_plot: bool) -> str:
        m = report.model
        status = report.status.value
        out = [f"<header><h1>Model audit {badge(status)}</h1>"]
        rows = [
            ("model", f"<code>{esc(m.get('path'))}</code>"),
            ("sha256", f"<code>{esc(m.get('sha256'))}</code>"),
            ("graph", esc(f"opset {m.get('opset')}, IR {m.get('ir_version')}, input {m.get('input')}, "
                          f"outputs {', '.join(map(str, m.get('outputs') or []))}")),
            ("device", esc(m.get("device"))),
        ]
        if report.baseline:
            b = report.baseline
            rows.append(("baseline", f"<code>{esc(b.get('path'))}</code> (sha256 "
                                     f"<code>{esc(str(b.get('sha256'))[:12])}</code>)"))
        if report.data:
            d = report.data
            extra = f", groups {', '.join(d.get('groups') or [])}" if d.get("groups") else ""
            rows.append(("data", f"<code>{esc(d.get('path'))}</code>, {esc(d.get('rows'))} rows, labels "
                                 f"{'yes' if d.get('labels') else 'no'}{esc(extra)}"))
        env = report.environment
        rows.append(("run", esc(f"{report.started_at}, {report.duration_s:.2f} s, seed "
                                f"{env.get('seed')}, spec {report.spec_path}")))
        out.append('<table class="meta">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
                   + "</table>")
        if report.interrupted:
            out.append('<p class="alert"><strong>Interrupted</strong>: this report is partial.</p>')
        if not can_plot:
            out.append("<p class=\"note\">Plots left out: matplotlib is not installed "
                       "(<code>pip install matplotlib</code>); their numbers are shown as tables.</p>")
        out.append("</header>")
        return "\n".join(out)

    def _summary(self, report: AuditReport) -> str:
        checks = report.checks
        summary = report.summary
        out = ['<nav id="summary"><h2>Summary</h2>',
               '<p class="counts">' + "".join(f"<span>{badge(s)} {int(summary.get(s, 0))}</span>"
                                              for s in STATUSES if summary.get(s)) + "</p>"]
        gates = [(i, c, g) for i, c in enumerate(checks) for g in c.gates]
        gating = report.gating
        out.append(f'<p class="gated">{int(gating["checks_gated"])} of {int(gating["checks"])} checks gated. '
                   f'{badge("info")} means the check ran and nothing was asserted.</p>')
        if gates:
            bad = sum(g.status.value != "pass" for _, _, g in gates)
            out.append(f"<h3>Gates: {len(gates) - bad} of {len(gates)} met</h3>")
            out.append('<div class="scroll"><table><tr><th>check</th><th>metric</th><th>bound</th><th>value</th>'
                       "<th>baseline</th><th>status</th><th>message</th></tr>")
            # Gates not met first: that is what a reader opens the report for.
            for i, c, g in sorted(gates, key=lambda t: t[2].status.value == "pass"):
                out.append(self._gate_row(g, f'<a href="#{anchor(i, c.id)}">{esc(c.id)}</a>'))
            out.append("</table></div>")
        else:
            out.append("<p>No gates in this spec: the status comes from check errors and findings only.</p>")
        out.append('<h3>Checks</h3><div class="scroll"><table><tr><th>check</th><th>uses</th><th>status</th>'
                   "<th>time</th><th>headline</th></tr>")
        for i, c in enumerate(checks):
            st = c.status.value
            if st == "error":
                head = f"error: {c.error or ''}"
            elif st == "skipped":
                head = f"skipped: {c.skip_reason or ''}"
            else:
                head = ", ".join(f"{k} = {fmt(v)}" for k, v in headline(c))
            out.append(f'<tr class="s-{esc(st)}"><td><a href="#{anchor(i, c.id)}">{esc(c.id)}</a>'
                       f"</td><td><code>{esc(c.use)}</code></td><td>{badge(st)}</td>"
                       f'<td class="num">{c.duration_s:.2f} s</td><td>{esc(head[:200])}</td></tr>')
        out.append("</table></div></nav>")
        return "\n".join(out)

    @staticmethod
    def _gate_row(g: GateResult, first: str | None = None) -> str:
        st = g.status.value
        cells = [first] if first is not None else []
        cells += [
            f"<code>{esc(g.metric)}</code>",
            esc(f"{g.op} {fmt(g.threshold)}"),
            f'<span class="num">{esc(fmt(g.value))}</span>',
            esc(fmt(g.baseline)),
            badge(st) + (" (warn only)" if g.severity == "warn" and st != "pass" else ""),
            esc(g.message),
        ]
        return f'<tr class="s-{esc(st)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    def _check(self, index: int, c: CheckReport, pm: Any, can_plot: bool) -> str:
        out = [f'<section id="{anchor(index, c.id)}"><h2>{esc(c.id)} {badge(c.status.value)}</h2>',
               f'<p class="meta"><code>{esc(c.use)}</code> · plugin {esc(c.plugin)} · {c.duration_s:.2f} s</p>']
        if c.error:
            out.append(f'<p class="alert">Error: {esc(c.error)}</p>')
        if c.skip_reason:
            out.append(f"<p>Skipped: {esc(c.skip_reason)}</p>")
        if c.gates:
            out.append('<div class="scroll"><h3>Gates</h3><table><tr><th>metric</th><th>bound</th><th>value</th>'
                       "<th>baseline</th><th>status</th><th>message</th></tr>")
            out += [self._gate_row(g) for g in c.gates]
            out.append("</table></div>")
        if c.findings:
            out.append('<h3>Findings</h3><ul class="findings">')
            for f in c.findings:
                loc = f" <code>{esc(f.location)}</code>" if f.location else ""
                out.append(f"<li>{badge(f.severity)}{loc} {esc(f.message)}</li>")
            out.append("</ul>")
        if c.metrics:
            out.append(self._plots(c, pm, can_plot))
            out.append(self._metric_table(c.metrics, c.baseline_metrics))
        if c.params:
            out.append("<p class=\"meta\">params: " + ", ".join(
                f"<code>{esc(k)}={esc(fmt(v))}</code>" for k, v in c.params.items()) + "</p>")
        if c.notes:
            out.append('<h3>Notes</h3><ul>' + "".join(f"<li>{esc(n)}</li>" for n in c.notes) + "</ul>")
        out.append("</section>")
        return "\n".join(out)

    def _plots(self, c: CheckReport, pm: Any, can_plot: bool) -> str:
        """The plugin's own rendering if it has one, else generic plots by metric shape."""
        if pm is not None:
            try:
                own = pm.hook.auditor_render_check(check=c, fmt="html")
            except Exception as exc:  # a broken renderer must not cost the whole report
                own = None
                note = f"the plugin's renderer failed ({type(exc).__name__}: {exc}); generic plots shown"
                return f'<p class="note">{esc(note)}</p>' + self._generic(c, can_plot)
            if own is not None:
                return f'<div class="plugin-render">{own}</div>'
        return self._generic(c, can_plot)

    @staticmethod
    def _generic(c: CheckReport, can_plot: bool) -> str:
        # a check's example gallery needs no plotting library (PNG images the check made)
        return gallery_section(c, can_plot)

    @staticmethod
    def _metric_table(metrics: dict[str, Any], baseline: dict[str, Any] | None) -> str:
        """Top-level scalars in an open table; nested ones (per class, per layer) folded away below it."""
        rows = flatten(metrics)
        top = [(n, v) for n, v in rows if n in metrics]
        nested = [(n, v) for n, v in rows if n not in metrics]
        head = "<tr><th>metric</th><th>value</th>" + ("<th>baseline</th><th>change</th>" if baseline else "") + "</tr>"

        def table(items: list[tuple[str, Any]]) -> str:
            body = []
            for name, v in items[:MAX_METRIC_ROWS]:
                cells = f"<td><code>{esc(name)}</code></td><td class=\"num\">{esc(fmt(v))}</td>"
                if baseline:
                    b = get(baseline, name)
                    cells += f'<td class="num">{esc(fmt(b))}</td><td class="num">{esc(change(v, b))}</td>'
                body.append(f"<tr>{cells}</tr>")
            more = ""
            if len(items) > MAX_METRIC_ROWS:
                more = f'<p class="meta">… {len(items) - MAX_METRIC_ROWS} more in report.json</p>'
            return "<table>" + head + "".join(body) + "</table>" + more

        out = []
        if top:
            out.append('<h3>Metrics</h3><div class="scroll">' + table(top) + "</div>")
        if nested:
            out.append(f'<details><summary>Nested metrics ({len(nested)})</summary><div class="scroll">{table(nested)}'
                       "</div></details>")
        return "\n".join(out)

    @staticmethod
    def _footer(report: AuditReport) -> str:
        env = report.environment
        versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
        plugins = ", ".join(f"{k} {v or ''}".strip() for k, v in (env.get("plugins") or {}).items())
        parts = []
        if env.get("python"):
            parts.append(f"Python {env['python']}" + (f" on {env['platform']}" if env.get("platform") else ""))
        if versions:
            parts.append(versions)
        if plugins:
            parts.append(f"plugins: {plugins}")
        parts.append("written by onnx-auditor")
        return f'<footer class="meta">{esc(" · ".join(parts))}</footer>'


def generic_figures(metrics: dict[str, Any], can_plot: bool = True, skip: tuple[str, ...] = (),
                    baseline: dict[str, Any] | None = None) -> str:
    """The generic plots of ``metrics`` (chosen by shape) as ``<figure>`` elements, ``baseline`` metrics
    overlaid on their curves and bars; top-level keys in ``skip`` are left out (a plugin renderer that draws
    them its own way calls this for the rest)."""
    out = []
    for p in plots_for({k: v for k, v in metrics.items() if k not in skip}, baseline=baseline):
        body = _figure(p) if can_plot else plot_table(p)
        out.append(f"<figure>{body}<figcaption>{esc(p.title)} ({esc(p.kind)})</figcaption></figure>")
    return "\n".join(out)


def _figure(p: Plot) -> str:
    """A plot as inline SVG; a drawing failure shows the plot's numbers instead (never a broken report)."""
    try:
        return render_svg(p)
    except Exception as exc:
        return f'<p class="note">plot failed ({esc(type(exc).__name__)}: {esc(exc)}):</p>' + plot_table(p)
