"""Generic plots for a check's metrics, chosen by the SHAPE of the metrics, not by the check's name.

Two steps, so that the choice can be tested without drawing anything:

1. :func:`plots_for` walks a check's JSON metrics and returns :class:`Plot` descriptions:

   - a list of dicts sharing a numeric, monotonic x key (``curve: [{sigma, accuracy, flip_rate}]``,
     ``history: [{epoch, loss}]``) -> ``line`` plot, one line per other numeric key;
   - a list of floats (``class_norms``) -> ``bar`` chart by index (``line`` when longer than 30);
     lists of integers only (indices, shapes, class labels) are never plotted;
   - a dict of numbers (``per_class_recall``; per-layer or per-class values) -> ``bar`` chart; sibling dicts
     with the same keys (``predicted_share`` and ``true_share``) share one grouped chart;
   - a dict of records (``layers: {name: {spectral_norm, ...}}``, ``per_group: {g: {accuracy, accuracy_ci}}``,
     nested ones too: ``runs: {rule: {optimizer: {...}}}``) -> ``bar`` chart per numeric field, with error bars
     where a field ``f`` has an interval ``f_ci``; lists of floats under the same key in the records
     (``loss`` per epoch of each run) -> one ``line`` plot per key, a line per record;
   - a rectangular list of lists of numbers, at least 2 x 2 (``confusion_matrix``, ``cka_matrix``) ->
     ``heatmap``, its axes labelled by a sibling list of matching length (``classes``, ``model_layers``);
   - numbers with intervals (``x`` and ``x_ci: [lo, hi]``, or ``ci: {x: [lo, hi]}``) -> ``interval`` plot;
   - top-level rates between 0 and 1, named ``*accuracy``, ``*_rate``, ``*_fraction`` or ``*_share``, at least
     two of them (``clean_accuracy``, ``robust_accuracy``, ``success_rate`` of an attack) -> one ``bar`` chart.

2. :func:`render_svg` draws one :class:`Plot` with matplotlib (imported lazily, no pyplot, the Agg canvas)
   and returns an inline ``<svg>`` element whose ids are made unique, so that many figures can share one page.
   :func:`figure_svg` does the same for any matplotlib figure: plugins rendering their own check section
   (hook ``auditor_render_check``) can use it.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auditor.report.json_report import json_number

if TYPE_CHECKING:
    from auditor.results import CheckReport

# Names that read as the x axis of a curve, in order of preference (else: the first monotonic numeric key).
PREFERRED_X = ("sigma", "epsilon", "eps", "severity", "level", "strength", "budget", "step", "steps", "epoch",
               "iteration", "round", "x", "threshold", "sparsity", "ratio", "fraction", "k", "t")
MAX_BARS_LABELLED = 60  # above this, bars lose their tick labels (they would overlap)
MAX_SERIES = 6
MAX_FIELDS = 6
_counter = itertools.count()


as_number = json_number


def as_interval(v: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` for a two-number list ``[lo, hi]`` with ``lo <= hi`` (or non-finite), else ``None``."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = as_number(v[0]), as_number(v[1])
        if lo is not None and hi is not None and not (lo > hi):
            return lo, hi
    return None


@dataclass(frozen=True)
class Plot:
    """One figure to draw: ``kind`` is ``line``, ``bar``, ``heatmap`` or ``interval``; ``title`` the metric
    path it shows; ``data`` the numbers it needs (nothing more):

    - line: ``x_label``, ``x`` (floats), ``series`` ({name: floats}), ``split`` (one panel per series when
      their scales differ);
    - bar: ``labels`` (str), ``series`` ({name: floats}), ``errors`` ({name: [[lo, hi] or None]}), ``panels``
      (True: one panel per series, for records whose fields have different units);
    - heatmap: ``matrix`` (rows of floats), ``rows``, ``cols`` (labels);
    - interval: ``names``, ``values`` (float or None), ``low``, ``high``.
    """

    kind: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)


def _numbers(values: list[Any]) -> list[float] | None:
    out = [as_number(v) for v in values]
    if any(v is None for v in out):
        return None
    return [float(v) for v in out if v is not None]


def _monotonic(xs: list[float]) -> bool:
    if len(xs) < 2 or any(math.isnan(x) for x in xs):
        return False
    d = [b - a for a, b in itertools.pairwise(xs)]
    return all(x > 0 for x in d) or all(x < 0 for x in d)


def _records_curve(name: str, items: list[Any]) -> Plot | None:
    """A list of dicts: a line plot over a monotonic numeric key, or bars labelled by a shared text key."""
    if len(items) < 2 or not all(isinstance(it, dict) for it in items):
        return None
    common = [k for k in items[0] if all(k in it for it in items[1:])]
    numeric = {k: _numbers([it[k] for it in items]) for k in common}
    numeric_keys = [k for k in common if numeric[k] is not None]
    x_key = next((k for k in PREFERRED_X if k in numeric_keys and _monotonic(numeric[k] or [])), None)
    if x_key is None:
        x_key = next((k for k in numeric_keys if _monotonic(numeric[k] or [])), None)
    ys: dict[str, list[float]] = {}
    for k in numeric_keys:
        v = numeric[k]
        if k != x_key and v is not None and len(ys) < MAX_SERIES:
            ys[str(k)] = v
    if not ys:
        return None
    if x_key is not None:
        return Plot("line", name, {"x_label": x_key, "x": numeric[x_key], "series": ys, "split": _split(ys)})
    label_key = next((k for k in common if all(isinstance(it[k], str) for it in items)), None)
    if label_key is None:
        return None
    return Plot("bar", name, {"labels": [it[label_key] for it in items], "series": ys, "errors": {},
                              "panels": len(ys) > 1})


def _split(series: dict[str, list[float]]) -> bool:
    """One panel per series when their magnitudes differ by more than 20x (a loss next to an accuracy)."""
    mags = []
    for v in series.values():
        finite = [abs(x) for x in v if math.isfinite(x)]
        if finite:
            mags.append(max(finite))
    positive = [m for m in mags if m > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 20


def _matrix(v: Any) -> list[list[float]] | None:
    """A rectangular list of lists of numbers, at least 2 x 2."""
    if not (isinstance(v, list) and len(v) >= 2 and all(isinstance(r, list) for r in v)):
        return None
    width = len(v[0])
    if width < 2 or any(len(r) != width for r in v):
        return None
    rows = [_numbers(r) for r in v]
    if any(r is None for r in rows):
        return None
    return [r for r in rows if r is not None]


def _labels_for(node: dict[str, Any], skip: str, n: int, taken: set[str]) -> tuple[str | None, list[str]]:
    """A sibling list of ``n`` scalars (``classes``, ``model_layers``) to label a matrix axis."""
    for k, v in node.items():
        if k == skip or k in taken or not isinstance(v, list) or len(v) != n:
            continue
        if all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            return k, [str(x) for x in v]
    return None, [str(i) for i in range(n)]


def _intervals(node: dict[str, Any], path: str) -> tuple[Plot | None, set[str]]:
    """Numbers with confidence intervals at this level: ``x`` with ``x_ci``, and ``ci: {x: [lo, hi]}``."""
    names: list[str] = []
    values: list[float | None] = []
    low: list[float] = []
    high: list[float] = []
    used: set[str] = set()
    for k, v in node.items():
        iv = as_interval(v)
        if k.endswith("_ci") and iv is not None:
            base = k[:-3]
            names.append(base)
            values.append(as_number(node.get(base)))
            low.append(iv[0])
            high.append(iv[1])
            used.add(k)
    ci = node.get("ci")
    if isinstance(ci, dict):
        pairs = [(k, as_interval(v)) for k, v in ci.items()]
        if pairs and all(iv is not None for _, iv in pairs):
            for k, iv in pairs:
                assert iv is not None
                names.append(k)
                values.append(as_number(node.get(k)))
                low.append(iv[0])
                high.append(iv[1])
            used.add("ci")
    if not names:
        return None, used
    title = f"{path}confidence intervals" if not path else f"{path[:-1]} (confidence intervals)"
    return Plot("interval", title, {"names": names, "values": values, "low": low, "high": high}), used


def _leaf_records(d: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The records of a dict of records, labelled by their keys; nested dicts of records are flattened
    (``runs: {rule: {optimizer: {...}}}`` -> ``rule/optimizer``). Empty when a value is not a dict."""
    out: list[tuple[str, dict[str, Any]]] = []
    for k, r in d.items():
        if not isinstance(r, dict):
            return []
        label = f"{prefix}{k}"
        inner = bool(r) and all(isinstance(x, dict) for x in r.values()) and depth < 2
        sub = _leaf_records(r, label + "/", depth + 1) if inner else []
        out += sub or [(label, r)]
    return out


def _float_list(v: Any) -> list[float] | None:
    """A list of at least two numbers with at least one float in it (a curve, not indices or a shape)."""
    if isinstance(v, list) and len(v) >= 2 and any(isinstance(x, float) for x in v):
        return _numbers(v)
    return None


def _record_bars(name: str, records: list[tuple[str, dict[str, Any]]]) -> Plot | None:
    """Records (per layer, per group, per class, per run): one bar panel per shared numeric field."""
    if len(records) < 2:
        return None
    rows = [r for _, r in records]
    fields: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in fields and as_number(v) is not None and not k.endswith("_ci"):
                fields.append(k)
    # A field must be a number (or missing) in every record to be comparable across them; an integer that
    # is the same in every record (blocks, groups) is structure, not a measurement.
    fields = [f for f in fields if all(f not in r or as_number(r[f]) is not None for r in rows)]
    fields = [f for f in fields if not _constant_int([r.get(f) for r in rows])][:MAX_FIELDS]
    if not fields:
        return None
    series: dict[str, list[float]] = {}
    errors: dict[str, list[list[float] | None]] = {}
    for f in fields:
        series[f] = [float(v) if (v := as_number(r.get(f))) is not None else math.nan for r in rows]
        ivs = [as_interval(r.get(f + "_ci")) for r in rows]
        if any(iv is not None for iv in ivs):
            errors[f] = [list(iv) if iv is not None else None for iv in ivs]
    return Plot("bar", name, {"labels": [label for label, _ in records], "series": series, "errors": errors,
                              "panels": True})


def _record_curves(name: str, records: list[tuple[str, dict[str, Any]]]) -> list[Plot]:
    """Lists of floats under the same key in several records (per-epoch ``loss`` of each training run): one
    line plot per key, one line per record, over the list index."""
    by_key: dict[str, dict[str, list[float]]] = {}
    for label, r in records:
        for k, v in r.items():
            nums = _float_list(v)
            if nums is not None and not k.endswith("_ci"):
                by_key.setdefault(k, {})[label] = nums
    plots = []
    for k, series in by_key.items():
        n = max(len(v) for v in series.values())
        padded = {lab: v + [math.nan] * (n - len(v)) for lab, v in list(series.items())[:MAX_SERIES * 2]}
        plots.append(Plot("line", f"{name} · {k}", {"x_label": "step", "x": [float(i + 1) for i in range(n)],
                                                     "series": padded, "split": False}))
    return plots


def _constant_int(values: list[Any]) -> bool:
    return len({json.dumps(v) for v in values}) == 1 and all(isinstance(v, int) for v in values)


def _dict_numbers(v: Any) -> dict[str, float] | None:
    """A dict of at least two numbers of one kind (per class, per layer): all integers (counts) or all floats.
    A mix (``{accuracy: 0.9, feature_rank: 10}``) is a record of different quantities, left to the table."""
    if not isinstance(v, dict) or len(v) < 2:
        return None
    kinds = {"int" if isinstance(x, int) and not isinstance(x, bool) else "float" for x in v.values()}
    if len(kinds) > 1:
        return None
    out = {str(k): as_number(x) for k, x in v.items()}
    if any(x is None for x in out.values()):
        return None
    return {k: float(x) for k, x in out.items() if x is not None}


RATE_SUFFIXES = ("accuracy", "_rate", "_fraction", "_share")


def _rates(metrics: dict[str, Any]) -> Plot | None:
    """Top-level rates in [0, 1] (accuracies, success and flip rates) side by side."""
    names, values = [], []
    for k, v in metrics.items():
        x = as_number(v)
        if isinstance(v, float) and x is not None and 0.0 <= x <= 1.0 and k.endswith(RATE_SUFFIXES):
            names.append(k)
            values.append(x)
    if len(names) < 2:
        return None
    return Plot("bar", "rates", {"labels": names, "series": {"rate": values}, "errors": {}, "panels": False,
                                 "ylim": [0.0, 1.0], "horizontal": True})


def with_baseline(plots: list[Plot], baseline: dict[str, Any] | None) -> list[Plot]:
    """``plots`` with the baseline's numbers attached (``data["baseline"]``: {series: values}) where the
    baseline's metrics give the same plot (kind and title) over the same x values or bar labels; lines and
    bars only (a heatmap or interval plot has no place for a second set of numbers)."""
    if not baseline:
        return plots
    base = {(p.kind, p.title): p for p in plots_for(baseline, max_plots=1000)}
    out = []
    for p in plots:
        b = base.get((p.kind, p.title))
        axis = "x" if p.kind == "line" else "labels"
        if p.kind not in ("line", "bar") or b is None or b.data.get(axis) != p.data.get(axis):
            out.append(p)
            continue
        over = {k: v for k, v in b.data["series"].items() if k in p.data["series"]}
        out.append(Plot(p.kind, p.title, {**p.data, "baseline": over}) if over else p)
    return out


def plots_for(metrics: dict[str, Any], max_plots: int = 6, max_depth: int = 2,
              baseline: dict[str, Any] | None = None) -> list[Plot]:
    """The plots that show ``metrics`` (a check's JSON metrics), in metric order, duplicates left out; with
    ``baseline`` (the baseline model's metrics of the same check) its numbers are overlaid where they fit
    (:func:`with_baseline`)."""
    found: list[Plot] = []
    seen: set[str] = set()

    def add(p: Plot | None) -> None:
        if p is None:
            return
        key = json.dumps([p.kind, p.data], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            found.append(p)

    def walk(node: dict[str, Any], path: str, depth: int, lists_only: bool = False) -> None:
        # ``lists_only``: inside one record of a dict of records (by_reference.<name>, per_group.<g>) only
        # matrices and curves get plots of their own; its numbers are already in the record bars.
        used: set[str] = set()
        if not lists_only:
            iv_plot, used = _intervals(node, path)
            add(iv_plot)
        grouped: set[str] = set()
        for k, v in node.items():
            name = f"{path}{k}"
            if k in used or k in grouped:
                continue
            if lists_only and not isinstance(v, list):
                continue
            mat = _matrix(v)
            if mat is not None:
                taken: set[str] = set()
                rk, rows = _labels_for(node, k, len(mat), taken)
                if rk:
                    taken.add(rk)
                ck, cols = _labels_for(node, k, len(mat[0]), taken)
                if ck is None and rk is not None and len(mat) == len(mat[0]):
                    cols = rows  # a confusion matrix: the same classes on both axes
                add(Plot("heatmap", name, {"matrix": mat, "rows": rows, "cols": cols,
                                           "row_label": rk or "", "col_label": ck or rk or ""}))
                continue
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                add(_records_curve(name, v))
                continue
            if isinstance(v, list) and len(v) >= 2 and not k.endswith("_ci") and not lists_only:
                nums = _numbers(v)
                if nums is not None and any(isinstance(x, float) for x in v):
                    labels = [str(i) for i in range(len(nums))]
                    if len(nums) > 30:
                        add(Plot("line", name, {"x_label": "index", "x": [float(i) for i in range(len(nums))],
                                                "series": {k: nums}, "split": False}))
                    else:
                        add(Plot("bar", name, {"labels": labels, "series": {k: nums}, "errors": {},
                                               "panels": False}))
                continue
            d = _dict_numbers(v)
            if d is not None:
                # Siblings over the same keys (predicted_share / true_share) go into one grouped chart.
                # Only siblings of a similar scale join (counts and shares get separate charts).
                series = {k: list(d.values())}
                grouped.add(k)
                for k2, v2 in node.items():
                    if k2 not in grouped and len(series) < 4:
                        d2 = _dict_numbers(v2)
                        if d2 is not None and list(d2) == list(d) and not _split({**series, k2: list(d2.values())}):
                            series[k2] = list(d2.values())
                            grouped.add(k2)
                title = name if len(series) == 1 else " / ".join(f"{path}{s}" for s in series)
                add(Plot("bar", title, {"labels": list(d), "series": series, "errors": {},
                                        "panels": _split(series)}))
                continue
            if isinstance(v, dict) and v:
                leaves = _leaf_records(v)
                if leaves:
                    add(_record_bars(name, leaves))
                    for curve in _record_curves(name, leaves):
                        add(curve)
                    if depth < max_depth:
                        # Records hold their own matrices and curves of records (by_reference.<name>.cka_matrix).
                        for label, rec in leaves:
                            walk(rec, f"{name}.{label.replace('/', '.')}.", depth + 1, lists_only=True)
                elif not lists_only and depth < max_depth:
                    walk(v, f"{name}.", depth + 1)

    add(_rates(metrics))
    walk(metrics, "", 0)
    return with_baseline(found[:max_plots], baseline)


# ------------------------------------------------------------------------------------------------- drawing


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (the ``html`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


_ID = re.compile(r'\bid="([^"]+)"')


def _namespace_ids(svg: str, prefix: str) -> str:
    """Prefix every id (and every reference to it) so that figures inlined in one page never collide."""
    ids = set(_ID.findall(svg))
    if not ids:
        return svg
    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)

    def ref(m: re.Match[str]) -> str:
        name = m.group(2)
        return f"{m.group(1)}#{prefix}{name}" if name in ids else m.group(0)

    return re.sub(r'(url\(|href=")#([^)"\s]+)', ref, svg)


def figure_svg(fig: Any, label: str = "") -> str:
    """An inline ``<svg>`` element for a matplotlib figure: fonts as paths (no font files), no XML prolog,
    no DOCTYPE or metadata (nothing that names a URL to fetch), ids unique within the page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "onnx-auditor"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = _namespace_ids(svg, f"f{next(_counter)}-")
    if label:
        svg = svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" ', 1)
    return svg


def _short(s: str, n: int = 18) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _draw_line(fig: Any, p: Plot) -> None:
    from matplotlib.ticker import MaxNLocator

    d = p.data
    series = d["series"]
    base = d.get("baseline") or {}
    # Steps and epochs are whole numbers: no 1.5 on their axis.
    whole = all(float(x).is_integer() for x in d["x"])
    if d.get("split") and len(series) > 1:
        axes = fig.subplots(1, len(series), squeeze=False)[0]
        for ax, (name, ys) in zip(axes, series.items()):
            line = ax.plot(d["x"], ys, marker="o", ms=3, label=name)[0]
            if name in base:
                ax.plot(d["x"], base[name], "--", marker="s", ms=2, color=line.get_color(), alpha=0.6,
                        label=f"{name} (baseline)")
                ax.legend(fontsize=7)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel(d["x_label"])
            ax.grid(alpha=0.3)
            if whole:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax = fig.subplots()
        for name, ys in series.items():
            line = ax.plot(d["x"], ys, marker="o", ms=3, label=name)[0]
            if name in base:
                ax.plot(d["x"], base[name], "--", marker="s", ms=2, color=line.get_color(), alpha=0.6,
                        label=f"{name} (baseline)")
        ax.set_xlabel(d["x_label"])
        ax.grid(alpha=0.3)
        if whole:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1 or base:
            ax.legend(fontsize=8)


def _draw_bar(fig: Any, p: Plot) -> None:
    d = p.data
    labels = [_short(s, 24) for s in d["labels"]]
    series = d["series"]
    n = len(labels)
    xs = list(range(n))
    show_ticks = n <= MAX_BARS_LABELLED
    base = d.get("baseline") or {}

    def overlay(ax: Any, name: str, at: list[float], horizontal: bool = False) -> None:
        # The baseline's value of each bar as a short red tick across it.
        if name in base:
            pts = (base[name], at) if horizontal else (at, base[name])
            ax.plot(*pts, "|" if horizontal else "_", ms=12, mew=2, ls="none", color="#e45756",
                    label="baseline")

    def errs(name: str, ys: list[float]) -> Any:
        ivs = d["errors"].get(name)
        if not ivs:
            return None
        lower = [y - iv[0] if iv is not None and math.isfinite(y) else 0.0 for y, iv in zip(ys, ivs)]
        upper = [iv[1] - y if iv is not None and math.isfinite(y) else 0.0 for y, iv in zip(ys, ivs)]
        return [[max(v, 0.0) for v in lower], [max(v, 0.0) for v in upper]]

    def ticks(ax: Any) -> None:
        if show_ticks:
            ax.set_xticks(xs)
            # Rotate only labels that would collide: long names, or many of them.
            longest = max(map(len, labels), default=0)
            tilt = longest > 6 or (n > 8 and longest > 2) or n > 24
            ax.set_xticklabels(labels, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
        else:
            ax.set_xlabel(f"{n} entries")
        ax.grid(axis="y", alpha=0.3)

    if d.get("horizontal"):
        # Few named values on one scale: one bar each, its value written at its end.
        ax = fig.subplots()
        ys = next(iter(series.values()))
        bars = ax.barh(xs, ys, color="#4c78a8")
        name0 = next(iter(series))
        overlay(ax, name0, [float(x) for x in xs], horizontal=True)
        if name0 in base:
            ax.legend(fontsize=7)
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in ys], padding=3, fontsize=8)
        ax.set_yticks(xs)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        if d.get("ylim"):
            ax.set_xlim(d["ylim"][0], d["ylim"][1] * 1.12)  # room for the value labels
        ax.grid(axis="x", alpha=0.3)
        return
    if d.get("panels") and len(series) > 1:
        cols = min(3, len(series))
        rows = math.ceil(len(series) / cols)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (name, ys) in zip(axes, series.items()):
            ax.bar(xs, ys, yerr=errs(name, ys), capsize=3, color="#4c78a8")
            overlay(ax, name, [float(x) for x in xs])
            ax.set_title(name, fontsize=9)
            if _log_scale(ys + base.get(name, [])):
                ax.set_yscale("log")  # condition numbers, spectral norms: orders of magnitude apart
                ax.set_title(f"{name} (log scale)", fontsize=9)
            ticks(ax)
        for ax in axes[len(series):]:
            ax.set_visible(False)
    else:
        ax = fig.subplots()
        width = 0.8 / len(series)
        for i, (name, ys) in enumerate(series.items()):
            offs = [x + (i - (len(series) - 1) / 2) * width for x in xs]
            ax.bar(offs, ys, width=width, yerr=errs(name, ys), capsize=3, label=name)
            overlay(ax, name, offs)
        ticks(ax)
        if d.get("ylim"):
            ax.set_ylim(*d["ylim"])
        if len(series) > 1 or base:
            handles, names = ax.get_legend_handles_labels()
            keep = dict(zip(names, handles))  # one "baseline" entry, however many series have one
            ax.legend(list(keep.values()), list(keep), fontsize=8)


def _log_scale(values: list[float]) -> bool:
    """Whether positive values span more than two orders of magnitude (a linear axis hides the small ones)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def _draw_heatmap(fig: Any, p: Plot) -> None:
    import numpy as np

    d = p.data
    m = np.asarray(d["matrix"], dtype=float)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    r, c = m.shape
    if r <= 40:
        ax.set_yticks(range(r))
        ax.set_yticklabels([_short(s) for s in d["rows"]], fontsize=7)
    if c <= 40:
        ax.set_xticks(range(c))
        tilt = max(len(s) for s in d["cols"]) > 3 and c > 4
        ax.set_xticklabels([_short(s) for s in d["cols"]], fontsize=7, rotation=45 if tilt else 0,
                           ha="right" if tilt else "center")
    ax.set_ylabel(d.get("row_label") or "row")
    ax.set_xlabel(d.get("col_label") or "column")
    if r * c <= 144:
        finite = m[np.isfinite(m)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(r):
            for j in range(c):
                v = m[i, j]
                txt = f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e5 else f"{v:.2g}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="black" if math.isfinite(v) and v > mid else "white")


def _draw_interval(fig: Any, p: Plot) -> None:
    d = p.data
    names = d["names"]
    ys = list(range(len(names)))
    ax = fig.subplots()
    mids = [v if v is not None else (lo + hi) / 2 for v, lo, hi in zip(d["values"], d["low"], d["high"])]
    lower = [max(m - lo, 0.0) for m, lo in zip(mids, d["low"])]
    upper = [max(hi - m, 0.0) for m, hi in zip(mids, d["high"])]
    ax.errorbar(mids, ys, xerr=[lower, upper], fmt="o", capsize=4, color="#4c78a8")
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(n, 32) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


_DRAW = {"line": _draw_line, "bar": _draw_bar, "heatmap": _draw_heatmap, "interval": _draw_interval}


def _size(p: Plot) -> tuple[float, float]:
    d = p.data
    if p.kind == "heatmap":
        r, c = len(d["matrix"]), len(d["matrix"][0])
        return min(9.0, 3.0 + 0.35 * c), min(8.0, 2.5 + 0.3 * r)
    if p.kind == "interval":
        return 7.0, 1.2 + 0.35 * len(d["names"])
    if p.kind == "bar" and d.get("horizontal"):
        return 7.0, 0.9 + 0.35 * len(d["labels"])
    if p.kind == "bar" and d.get("panels") and len(d["series"]) > 1:
        rows = math.ceil(len(d["series"]) / 3)
        return 9.0, 2.6 * rows
    if p.kind == "line" and d.get("split") and len(d["series"]) > 1:
        return min(10.0, 3.3 * len(d["series"])), 2.8
    return 7.0, 3.2


def new_figure(width: float, height: float) -> Any:
    """An empty matplotlib figure of ``width`` x ``height`` inches on the Agg canvas (no pyplot, so no global
    state and no display), laid out by matplotlib's constrained layout: what a render hook draws on."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render_figure(p: Plot) -> Any:
    """Draw ``p`` on a new matplotlib figure (Agg canvas, no pyplot) and return the figure."""
    fig = new_figure(*_size(p))
    _DRAW[p.kind](fig, p)
    return fig


def render_svg(p: Plot) -> str:
    """Draw ``p`` with matplotlib and return it as an inline ``<svg>`` element."""
    return figure_svg(render_figure(p), label=f"{p.kind} plot of {p.title}")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_table(p: Plot, max_rows: int = 50) -> str:
    """The plot's numbers as an HTML table (when matplotlib is missing), at most ``max_rows`` rows."""
    e = html.escape
    d = p.data
    if p.kind == "heatmap":
        head = "".join(f"<th>{e(c)}</th>" for c in d["cols"])
        body = "".join(f"<tr><th>{e(r)}</th>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
                       for r, row in list(zip(d["rows"], d["matrix"]))[:max_rows])
        return f'<table class="data"><tr><th></th>{head}</tr>{body}</table>'
    if p.kind == "interval":
        body = "".join(f"<tr><th>{e(n)}</th><td>{_fmt(v)}</td><td>[{_fmt(lo)}, {_fmt(hi)}]</td></tr>"
                       for n, v, lo, hi in zip(d["names"], d["values"], d["low"], d["high"]))
        return f'<table class="data"><tr><th></th><th>value</th><th>interval</th></tr>{body}</table>'
    keys = d["x"] if p.kind == "line" else d["labels"]
    first = d["x_label"] if p.kind == "line" else ""
    series = {**d["series"], **{f"{k} (baseline)": v for k, v in (d.get("baseline") or {}).items()}}
    head = f"<th>{e(first)}</th>" + "".join(f"<th>{e(s)}</th>" for s in series)
    rows = []
    for i, k in enumerate(keys[:max_rows]):
        rows.append(f"<tr><th>{e(_fmt(k))}</th>" + "".join(f"<td>{_fmt(v[i])}</td>" for v in series.values())
                    + "</tr>")
    more = f'<tr><td colspan="{len(series) + 1}">… {len(keys) - max_rows} more</td></tr>' \
        if len(keys) > max_rows else ""
    return f'<table class="data"><tr>{head}</tr>{"".join(rows)}{more}</table>'


# ------------------------------------------------------------------------------------ for render hooks
def esc(v: Any) -> str:
    """HTML-escaped text, for the fragments an ``auditor_render_check`` implementation returns."""
    return html.escape(str(v), quote=True)


def designed_section(check: CheckReport, fig: Any, *, label: str, caption: str, skip: tuple[str, ...] = ()) -> str:
    """What a render hook returns for a check it draws a designed figure for: ``fig`` as an inline SVG
    (``label`` its accessible name) with ``caption`` below it, then the generic plots of the check's metrics
    other than ``skip`` (the baseline's overlaid)."""
    svg = figure_svg(fig, label=label)
    return (f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"
            + generic_figures(check.metrics, skip=skip, baseline=check.baseline_metrics))


def generic_figures(metrics: dict[str, Any], can_plot: bool = True, skip: tuple[str, ...] = (),
                    baseline: dict[str, Any] | None = None) -> str:
    """The HTML reporter's generic plots of ``metrics`` (minus the ``skip`` keys), for a render hook that draws
    a designed figure for some metrics and leaves the rest to the generic plots; ``baseline`` metrics are
    overlaid on their curves and bars."""
    from auditor.report import html as html_report  # the reporter imports this module: import it lazily

    return html_report.generic_figures(metrics, can_plot, skip, baseline)
