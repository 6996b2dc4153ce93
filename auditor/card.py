"""``auditor card report.json``: a Markdown model card from an audit report, in the sections of the Hugging Face
model card (model details; evaluation: data, results and the gates; bias, risks and limitations from the
fairness and robustness checks; how the numbers were obtained).

Everything in the card is read from the report; nothing is invented. What a report cannot know (intended uses,
training data, licence) is left as a visible ``_To be written_`` line for the model's owner, rather than
guessed.

The card opens with YAML front matter in the Hub's metadata schema: ``library_name: onnx``, ``tags`` and a
``model-index`` (:func:`model_index`) holding the evaluation results the audit measured on its data, one
``results`` entry per check (task, dataset, metrics with ``type``, ``value`` and ``name``), so that the Hub and
tools that read model cards (``huggingface_hub.ModelCard``) find the numbers without parsing the Markdown.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import yaml

from auditor.metrics import format_value, get, scalars
from auditor.report.markdown import ICON, cell
from auditor.results import AuditReport, CheckReport, Status

#: Plugins whose checks describe bias and fairness, and robustness (read as limitations).
BIAS_PLUGINS = ("bias",)
ROBUSTNESS_PLUGINS = ("robustness", "torch")
TODO = "_To be written by the model's owner (an audit report cannot know it)._"


def _v(v: Any) -> str:
    """A number as the card prints it (6 significant digits, so that it can be checked against report.json)."""
    if isinstance(v, float):
        return f"{v:.6g}"
    return format_value(v, digits=6, width=80)


def _family(c: CheckReport) -> str:
    return c.use.split(".", 1)[0]


def _metric_rows(c: CheckReport, limit: int = 40) -> list[str]:
    rows = scalars(c.metrics, max_depth=2, inline_lists=0)
    out = [f"| `{cell(name)}` | {cell(_v(v))} |" for name, v in rows[:limit]]
    if len(rows) > limit:
        out.append(f"| … {len(rows) - limit} more in report.json | |")
    return out


def _check_block(c: CheckReport) -> list[str]:
    """One check: status, what it measured (scalar metrics), its gates and findings, or why it did not run."""
    out = [f"#### `{c.id}` ({c.use}): {ICON.get(c.status.value, '')} {c.status.value}", ""]
    if c.status is Status.ERROR:
        return [*out, f"Not evaluated: the check errored ({cell(c.error or '')}).", ""]
    if c.status is Status.SKIPPED:
        return [*out, f"Not evaluated: {cell(c.skip_reason or 'skipped')}.", ""]
    rows = _metric_rows(c)
    if rows:
        out += ["| metric | value |", "|---|---:|", *rows, ""]
    for g in c.gates:
        out.append(f"- Gate `{g.metric}` {g.op} {_v(g.threshold)}: {g.status.value} ({cell(g.message)})")
    for f in c.findings:
        loc = f" `{cell(f.location)}`" if f.location else ""
        out.append(f"- Finding ({f.severity}){loc}: {cell(f.message)}")
    return [*out, ""] if c.gates or c.findings else out


#: Checks whose numbers describe the weights alone, not an evaluation on the data (left out of model-index).
WEIGHTS_ONLY = ("sparsity.profile", "sparsity.filters", "sparsity.conditioning")
#: Metric names that are identifiers of the Hub's metrics (https://hf.co/metrics); others keep their own name.
HUB_METRICS = {"accuracy": "accuracy", "f1": "f1", "macro_f1": "f1", "precision": "precision", "recall": "recall",
               "mae": "mae", "mse": "mse", "rmse": "mse", "r2": "r_squared", "roc_auc": "roc_auc"}


def _task_type(report: AuditReport) -> str:
    """The Hub's task id for the audited model: classification or regression (read from the metrics the audit
    reported), of images (a 4-D input), token ids or tabular rows."""
    regression = any(c.use == "performance.metrics" and "rmse" in c.metrics and "accuracy" not in c.metrics
                     for c in report.checks)
    inputs = report.model.get("inputs") or []
    first = inputs[0] if inputs and isinstance(inputs[0], dict) else {}
    shape, dtype = first.get("shape"), str(first.get("dtype") or "")
    if isinstance(shape, list) and len(shape) == 4:
        return "image-classification" if not regression else "image-to-image"
    if not regression and dtype.startswith("int") and isinstance(shape, list) and len(shape) == 2:
        return "text-classification"
    return "tabular-regression" if regression else "tabular-classification"


def _index_metrics(c: CheckReport) -> list[dict[str, Any]]:
    """The numbers of one check for model-index: its gated metrics, then every other top-level finite float
    (integers are counts and sizes, ``duration_s`` a wall time)."""
    names = list(dict.fromkeys([g.metric for g in c.gates]
                               + [k for k, v in c.metrics.items() if isinstance(v, float) and k != "duration_s"]))
    out = []
    for name in names:
        v = get(c.metrics, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        gate = "; ".join(f"gate {g.op} {_v(g.threshold)}: {g.status.value}" for g in c.gates if g.metric == name)
        out.append({"type": HUB_METRICS.get(name, name), "value": v,
                    "name": f"{c.id}: {name}" + (f" ({gate})" if gate else "")})
    return out


def model_index(report: AuditReport) -> dict[str, Any]:
    """The card's metadata (Hub schema): ``library_name``, ``tags`` and ``model-index`` with one result per
    check that ran on the audit data (task, dataset, metrics), every value the report's own."""
    name = PurePath(str(report.model.get("path") or "model.onnx")).stem
    meta: dict[str, Any] = {"library_name": "onnx", "tags": ["onnx", "onnx-auditor"]}
    d = report.data
    results = []
    if d:
        dataset = {"type": PurePath(str(d.get("path"))).name, "name": f"{PurePath(str(d.get('path'))).name} "
                   f"({d.get('rows')} rows)"}
        task = {"type": _task_type(report)}
        for c in report.checks:
            if c.status in (Status.SKIPPED, Status.ERROR) or c.use in WEIGHTS_ONLY:
                continue
            metrics = _index_metrics(c)
            if metrics:
                results.append({"task": dict(task), "dataset": dict(dataset), "metrics": metrics})
    meta["model-index"] = [{"name": name, "results": results}]
    return meta


def render_card(report: AuditReport) -> str:
    """The model card's Markdown text, with the Hub's YAML metadata (:func:`model_index`) in front."""
    m = report.model
    name = PurePath(str(m.get("path") or "model.onnx")).name
    g = report.gating
    front = yaml.safe_dump(model_index(report), sort_keys=False, allow_unicode=True, width=1000)
    lines = ["---", front.rstrip("\n"), "---", "", f"# Model card: {name}", "",
             f"Audit status: {ICON.get(report.status.value, '')} **{report.status.value}** · "
             f"{g['checks_gated']} of {g['checks']} checks gated, {g['gates_met']} of {g['gates']} gates met"
             + (" · **interrupted: the audit is partial**" if report.interrupted else ""), ""]

    # ------------------------------------------------------------------------------------ model details
    inputs = ", ".join(f"`{i.get('name')}` {i.get('dtype')} {i.get('shape')}" for i in m.get("inputs") or []) \
        or str(m.get("input"))
    lines += ["## Model Details", "", "### Model Description", "",
              "| | |", "|---|---|",
              f"| file | `{cell(m.get('path'))}` |",
              f"| sha256 | `{cell(m.get('sha256'))}` |",
              f"| format | ONNX, IR version {m.get('ir_version')}, opset {m.get('opset')} |",
              f"| producer | {cell(m.get('producer') or 'not recorded in the file')} |",
              f"| inputs | {cell(inputs)} |",
              f"| outputs | {cell(', '.join(map(str, m.get('outputs') or [])))} |", ""]
    if report.baseline:
        b = report.baseline
        lines += [f"Compared with the baseline `{cell(b.get('path'))}` (sha256 `{str(b.get('sha256'))[:12]}`).", ""]
    lines += ["### Intended uses", "", TODO, ""]

    # ------------------------------------------------------------------------------------ evaluation
    lines += ["## Evaluation", "", "### Testing Data", ""]
    d = report.data
    if d:
        lines.append(f"`{cell(d.get('path'))}`: {d.get('rows')} rows" +
                     (f" (a sample of {d.get('total_rows')})" if d.get("total_rows") not in (None, d.get("rows"))
                      else "") + f", labels {'yes' if d.get('labels') else 'no'}"
                     + (f", groups {', '.join(d.get('groups') or [])}" if d.get("groups") else "") + ".")
        for note in d.get("notes") or []:
            lines.append(f"- {cell(note)}")
    else:
        lines.append("No data: a weights-only audit (the model was not run).")
    lines += ["", "### Results", ""]
    gates = [(c, x) for c in report.checks for x in c.gates]
    if gates:
        lines += ["Release gates (a gate is a bound the release must meet):", "",
                  "| check | metric | bound | value | baseline | status |", "|---|---|---|---:|---:|---|"]
        for c, x in gates:
            lines.append(f"| `{cell(c.id)}` | `{cell(x.metric)}` | {x.op} {_v(x.threshold)} | {_v(x.value)} | "
                         f"{_v(x.baseline)} | {ICON.get(x.status.value, '')} {x.status.value} |")
        lines.append("")
    else:
        lines += ["No gates: nothing in this audit was asserted; the numbers below are measurements only.", ""]
    evaluated = [c for c in report.checks if _family(c) not in (*BIAS_PLUGINS, *ROBUSTNESS_PLUGINS)]
    for c in evaluated:
        lines += _check_block(c)

    # ------------------------------------------------------------------------------------ bias, limitations
    lines += ["## Bias, Risks, and Limitations", ""]
    bias = [c for c in report.checks if _family(c) in BIAS_PLUGINS]
    robust = [c for c in report.checks if _family(c) in ROBUSTNESS_PLUGINS]
    lines += ["### Bias and fairness", ""]
    if bias:
        for c in bias:
            lines += _check_block(c)
    else:
        lines += ["Not audited: the audit ran no bias check (e.g. `bias.group_metrics` with `data.groups`).", ""]
    lines += ["### Robustness", ""]
    if robust:
        for c in robust:
            lines += _check_block(c)
    else:
        lines += ["Not audited: the audit ran no robustness check (e.g. `robustness.noise`).", ""]
    problems = [(c, f.message) for c in report.checks for f in c.findings if f.severity in ("warn", "fail")]
    problems += [(c, x.message) for c in report.checks for x in c.gates if x.status is not Status.PASS]
    missing = [c for c in report.checks if c.status in (Status.SKIPPED, Status.ERROR)]
    lines += ["### Known limitations", ""]
    if problems or missing:
        lines += [f"- `{cell(c.id)}`: {cell(msg)}" for c, msg in problems]
        lines += [f"- `{cell(c.id)}` was not evaluated: {cell(c.skip_reason or c.error or c.status.value)}"
                  for c in missing]
    else:
        lines.append("No warning or failing finding, and no gate unmet, in this audit.")
    lines += ["", TODO.replace("(an audit report cannot know it)", "(limitations the audit did not test)"), ""]

    # ------------------------------------------------------------------------------------ provenance
    env = report.environment
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines += ["## How the numbers were obtained", "",
              f"Audited by onnx-auditor with the spec `{cell(report.spec_path)}` on "
              f"{report.started_at or 'an unknown date'} ({report.duration_s:.1f} s), seed {env.get('seed')}, "
              f"on {cell(m.get('device'))}. Re-run with "
              f"`auditor run {cell(report.spec_path)}`; the full numbers are in report.json.", "",
              "| check | uses | plugin | parameters |", "|---|---|---|---|"]
    for c in report.checks:
        params = ", ".join(f"{k}={format_value(v, width=40)}" for k, v in c.params.items()) or "defaults"
        lines.append(f"| `{cell(c.id)}` | `{c.use}` | {cell(c.plugin)} | {cell(params)} |")
    lines += ["", f"Software: {cell(versions)}" + (f"; Python {env.get('python')}" if env.get("python") else ""), ""]
    return "\n".join(lines)
