"""The Python API: :func:`audit` runs an audit from a notebook or a script and returns the typed report;
views of a report (a pandas frame, files in any format, an HTML fragment for Jupyter).

::

    import auditor
    report = auditor.audit({"checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 0.9}}}]},
                           model="model.onnx", data=(x_test, y_test))
    report.passed, report.metrics("performance.metrics")["accuracy"], report.to_frame()
"""

from __future__ import annotations

import copy
import dataclasses
import html
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from auditor.metrics import format_value, get, leaves
from auditor.results import AuditReport

if TYPE_CHECKING:
    import onnx
    import pandas as pd

    from auditor.data import DataConfig, Dataset
    from auditor.datasets.registry import LoadRequest
    from auditor.spec import Spec

#: The data source name under which :func:`audit` hands in-memory data to the loader.
MEMORY_SOURCE = "python"


def audit(spec: str | Path | Mapping[str, Any] | Spec, *, model: str | Path | onnx.ModelProto | None = None,
          data: Any = None, label: str | None = None, groups: Sequence[str] | None = None,
          baseline: str | Path | onnx.ModelProto | None = None, seed: int | None = None,
          plugins: Iterable[object] = (), disable: Iterable[str] = (), workdir: str | Path | None = None,
          report_dir: str | Path | None = None, formats: Sequence[str] | None = None) -> AuditReport:
    """Run an audit in this process and return its :class:`~auditor.results.AuditReport`.

    ``spec``: a spec file path, a spec dict (as the YAML would be; ``version`` may be left out, and ``model``
    too when ``model=`` is given; relative paths resolve against ``workdir``, default the current folder), or
    a parsed :class:`~auditor.spec.Spec`.

    ``model`` / ``baseline``: a path or an ``onnx.ModelProto`` (written to a temporary file for the audit),
    replacing the spec's ``model.path`` / ``baseline.path``.

    ``data`` replaces the spec's data file (its ``limit``, ``batch_size`` and ``preprocess`` still apply):
    an array ``x``; a tuple ``(x, y)`` or ``(x, y, groups)``; a dict with ``x``, ``y`` and ``groups``
    (``{name: values}``); a pandas DataFrame whose ``label`` column holds the labels (default: the spec's
    ``data.y``, else a column named ``y`` or ``label``), ``groups`` columns the sensitive attributes (default:
    the spec's ``data.groups``) and every other column a feature; or a :class:`~auditor.data.Dataset`.

    ``plugins``: extra plugin modules or objects; ``disable``: plugins not to load. Nothing is written unless
    ``report_dir`` is given (then ``formats``, default the spec's ``report.formats``). Errors are the
    exceptions of :mod:`auditor.errors` (``SpecError``, ``ModelLoadError``, ``DataError``, ...), each with
    the one line the command line would print. A keyboard interrupt returns the partial report
    (``interrupted`` is true, ``passed`` false).
    """
    from auditor.plugins import build_registry
    from auditor.runner import Interrupted, Runner, load_inputs, write_reports

    registry = build_registry(disable=disable, extra_plugins=plugins)
    dataset: Dataset | None = None
    with tempfile.TemporaryDirectory(prefix="auditor-api-") as tmp:
        base = Path(workdir) if workdir is not None else Path.cwd()
        if isinstance(spec, Mapping):
            hints = dict(spec.get("data") or {})
            if data is not None:
                dataset = as_dataset(data, label=label if label is not None else hints.get("y"),
                                     groups=groups if groups is not None else hints.get("groups"))
            parsed = _spec_from_dict(spec, registry, base, model is not None, dataset, Path(tmp))
        else:
            parsed = _spec(spec, registry)
            if data is not None:
                cfg = parsed.data
                dataset = as_dataset(data, label=label if label is not None else cfg.y if cfg else None,
                                     groups=groups if groups is not None else cfg.groups if cfg else None)
        if model is not None:
            parsed.model = dataclasses.replace(parsed.model, path=_model_path(model, Path(tmp), "model"))
        if baseline is not None:
            from auditor.model import ModelConfig

            base_cfg = parsed.baseline or ModelConfig(path=Path("baseline.onnx"))
            parsed.baseline = dataclasses.replace(base_cfg, path=_model_path(baseline, Path(tmp), "baseline"))
        if seed is not None:
            parsed.seed = seed
        sources = dict(registry.datasets)
        if dataset is not None:
            parsed.data = _memory_config(parsed.data, dataset)
            sources[MEMORY_SOURCE] = type("MemorySource", (_MemorySource,), {"dataset": dataset})
        loaded = load_inputs(parsed, sources)
        try:
            report = Runner(parsed, registry).run(loaded)
        except Interrupted as exc:
            report = exc.report
    if report_dir is not None:
        write_reports(report, Path(report_dir), list(formats or parsed.formats), registry)
    return report


def _spec(spec: Any, registry: Any) -> Spec:
    """A spec file parsed, or a copy of a parsed Spec (overrides never change the caller's object)."""
    from auditor.spec import Spec, parse_spec

    if isinstance(spec, Spec):
        return copy.copy(spec)
    if isinstance(spec, (str, Path)):
        return parse_spec(Path(spec), registry.checks, sorted(registry.reporters))
    raise TypeError(f"spec must be a path, a dict or a Spec, not {type(spec).__name__}")


def _spec_from_dict(spec: Mapping[str, Any], registry: Any, workdir: Path, has_model: bool,
                    dataset: Dataset | None, tmp: Path) -> Spec:
    """A spec dict parsed as its YAML would be, with the model and data given in Python standing in for
    their files (so that checks needing data or labels see what the arrays hold)."""
    from auditor.spec import parse_spec

    doc = {"version": 1, **copy.deepcopy(dict(spec))}
    if has_model:
        # the real path (or the written ModelProto) replaces it after parsing
        doc["model"] = {**(doc.get("model") or {}), "path": str(tmp / "model.onnx")}
    if dataset is not None:
        section = {k: v for k, v in (doc.get("data") or {}).items() if k not in ("x", "y", "groups", "columns")}
        section["path"] = "<python>"
        if dataset.y is not None:
            section["y"] = "y"
        if dataset.groups:
            section["groups"] = list(dataset.groups)
        doc["data"] = section
    return parse_spec(workdir / "spec.yaml", registry.checks, sorted(registry.reporters), doc=doc)


def _model_path(model: Any, tmp: Path, name: str) -> Path:
    if isinstance(model, (str, Path)):
        return Path(model)
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"{name} must be a path or an onnx.ModelProto, not {type(model).__name__}")
    path = tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _memory_config(cfg: DataConfig | None, dataset: Dataset) -> DataConfig:
    """The spec's data section pointed at the in-memory source (its limit, batch size, preprocessing kept)."""
    from auditor.data import DataConfig

    base = cfg or DataConfig(path=Path("<python>"))
    return dataclasses.replace(base, path=Path("<python>"), format=MEMORY_SOURCE, x=None,
                               y="y" if dataset.y is not None else None, groups=list(dataset.groups), columns=[],
                               images=None)


def as_dataset(data: Any, *, label: str | None = None, groups: Sequence[str] | None = None) -> Dataset:
    """A :class:`~auditor.data.Dataset` from what :func:`audit` accepts as ``data=`` (see there), validated
    as a data file would be (row counts agree, no NaN labels, group values normalised)."""
    from auditor.data import DataConfig, Dataset, _assemble

    if isinstance(data, Dataset):
        return data
    pd = sys.modules.get("pandas")  # a DataFrame exists only where pandas is imported; never import it here
    if pd is not None and isinstance(data, pd.DataFrame):
        cols = [str(c) for c in data.columns]
        y_col = label if label is not None else next((c for c in ("y", "label") if c in cols), None)
        if y_col is not None and y_col not in cols:
            raise _data_error(f"data: label column '{y_col}' not in the DataFrame (has: {', '.join(cols)})")
        columns = {str(c): data[c].to_numpy() for c in data.columns}
        cfg = DataConfig(path=Path("DataFrame"), y=y_col, groups=list(groups or []))
        ds = _assemble(columns, cfg, Path("DataFrame"), tabular=True)
        ds.source = f"pandas DataFrame ({len(data)} rows)"
        return ds
    if isinstance(data, Mapping):
        if "x" not in data:
            raise _data_error(f"data: a dict needs 'x' (has: {', '.join(map(str, data))})")
        x, y, g = data["x"], data.get("y"), dict(data.get("groups") or {})
    elif isinstance(data, tuple):
        if not 1 <= len(data) <= 3:
            raise _data_error("data: a tuple is (x,), (x, y) or (x, y, groups)")
        x, y, g = data[0], data[1] if len(data) > 1 else None, dict(data[2]) if len(data) > 2 else {}
    else:
        x, y, g = data, None, {}
    table: dict[str, Any] = {"x": np.asarray(x)}
    if y is not None:
        table["y"] = np.asarray(y)
    for name, values in g.items():
        table[f"groups:{name}"] = np.asarray(values)
    cfg = DataConfig(path=Path("arrays"), y="y" if y is not None else None, groups=[f"groups:{n}" for n in g])
    ds = _assemble(table, cfg, Path("arrays"), tabular=False)
    ds.groups = {k.removeprefix("groups:"): v for k, v in ds.groups.items()}
    ds.missing = {k.removeprefix("groups:"): v for k, v in ds.missing.items()}
    ds.columns = {k.removeprefix("groups:"): v for k, v in ds.columns.items()}
    ds.source = f"numpy arrays ({ds.n} rows)"
    return ds


def _data_error(msg: str) -> Exception:
    from auditor.errors import DataError

    return DataError(msg)


class _MemorySource:
    """A data source handing the loader a Dataset built in this process (what ``audit(data=...)`` passes)."""

    name: ClassVar[str] = MEMORY_SOURCE
    description: ClassVar[str] = "in-memory data given to auditor.audit(data=...)"
    dataset: ClassVar[Any] = None

    def claims(self, cfg: DataConfig) -> bool:
        """Only when named (``data.format``)."""
        return False

    def load(self, cfg: DataConfig, request: LoadRequest) -> Dataset:
        """The dataset, with the spec's batch size and ``data.preprocess`` applied as for a data file."""
        ds: Dataset = copy.copy(self.dataset)
        ds.batch_size = cfg.batch_size
        if cfg.preprocess is not None:
            from auditor.datasets.loader import preprocess_arrays

            ds = preprocess_arrays(ds, cfg, request)
        return ds

FRAME_COLUMNS = ["check", "use", "status", "metric", "value", "baseline", "gate", "gate_status"]


def report_frame(report: AuditReport) -> pd.DataFrame:
    """One row per (check, scalar metric leaf): see :meth:`AuditReport.to_frame`."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is in the dev extra
        raise ImportError("AuditReport.to_frame() needs pandas (pip install pandas)") from exc
    rows: list[dict[str, Any]] = []
    for c in report.checks:
        gates: dict[str, list[str]] = {}
        gate_status: dict[str, str] = {}
        for g in c.gates:
            gates.setdefault(g.metric, []).append(f"{g.op} {g.threshold:g}")
            # the worst of the gates on one metric
            if gate_status.get(g.metric) != "fail":
                gate_status[g.metric] = g.status.value
        for name, v in leaves(c.metrics).items():
            if isinstance(v, (dict, list)):
                continue  # empty containers
            b = get(c.baseline_metrics, name)
            rows.append({"check": c.id, "use": c.use, "status": c.status.value, "metric": name, "value": v,
                         "baseline": b if not isinstance(b, (dict, list)) else None,
                         "gate": ", ".join(gates.get(name, [])) or None, "gate_status": gate_status.get(name)})
        for name in gates:  # a gate on a metric the check did not report (it failed) still gets its row
            if not any(r["check"] == c.id and r["metric"] == name for r in rows):
                rows.append({"check": c.id, "use": c.use, "status": c.status.value, "metric": name, "value": None,
                             "baseline": None, "gate": ", ".join(gates[name]), "gate_status": gate_status[name]})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def save_report(report: AuditReport, directory: Path, formats: list[str], plugins: Any = ()) -> list[Path]:
    """Write ``report`` in ``formats`` to ``directory`` with the installed reporters (JSON first)."""
    from auditor.errors import SpecError
    from auditor.plugins import build_registry
    from auditor.runner import write_reports

    registry = build_registry(extra_plugins=plugins)
    unknown = [f for f in formats if f not in registry.reporters]
    if unknown:
        raise SpecError("formats", [f"unknown format(s) {', '.join(unknown)} "
                                    f"(available: {', '.join(sorted(registry.reporters))})"])
    return write_reports(report, Path(directory), list(formats), registry)


_COLOUR = {"pass": "#1a7f37", "info": "#0969da", "warn": "#9a6700", "fail": "#cf222e", "error": "#82071e",
           "skipped": "#6e7781"}


def _badge(status: str) -> str:
    return (f'<span style="background:{_COLOUR.get(status, "#6e7781")};color:#fff;border-radius:8px;'
            f'padding:0 6px;font-size:11px;font-weight:600">{html.escape(status)}</span>')


def report_html(report: AuditReport) -> str:
    """A compact HTML fragment for Jupyter: status, how much was gated, one row per check with its headline
    metrics and gates (the full page is ``report.save(dir, formats=["html"])``)."""
    from auditor.report.markdown import headline

    e = html.escape
    g = report.gating
    out = [f"<div><p><b>Model audit</b> {_badge(report.status.value)} <code>{e(str(report.model.get('path')))}"
           f"</code> · {g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} gates "
           "met" + (" · <b>interrupted</b>" if report.interrupted else "") + "</p>",
           '<table><thead><tr><th style="text-align:left">check</th><th>status</th>'
           '<th style="text-align:left">metrics</th><th style="text-align:left">gates</th></tr></thead><tbody>']
    for c in report.checks:
        if c.error:
            metrics = f"error: {c.error}"
        elif c.skip_reason:
            metrics = f"skipped: {c.skip_reason}"
        else:
            metrics = ", ".join(f"{k}={format_value(v, width=40)}" for k, v in headline(c))
        gates = "<br>".join(f"{_badge(x.status.value)} {e(x.message)}" for x in c.gates)
        out.append(f'<tr><td style="text-align:left"><code>{e(c.id)}</code></td><td>{_badge(c.status.value)}</td>'
                   f'<td style="text-align:left">{e(metrics)}</td><td style="text-align:left">{gates}</td></tr>')
    out.append("</tbody></table></div>")
    return "\n".join(out)
