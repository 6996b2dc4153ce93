"""YAML spec -> validated :class:`Spec`. Every problem is reported at once, each with its YAML path."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from auditor.checks import CheckInfo, Need
from auditor.data import DataConfig
from auditor.datasets.preprocess import PREPROCESS_SCHEMA
from auditor.datasets.preprocess import merged as merged_preprocess
from auditor.datasets.preprocess import validate as validate_preprocess
from auditor.distributed.config import EXECUTION_SCHEMA, ExecutionConfig, parse_execution
from auditor.errors import SpecError, short
from auditor.model import ModelConfig
from auditor.outputs import Task
from auditor.params import problems_of
from auditor.yamlio import Path_, YamlProblem
from auditor.yamlio import load as _load_text


class GateOp(str, Enum):
    """A bound a gate puts on a metric."""

    MIN = "min"
    MAX = "max"
    MAX_DROP = "max_drop"
    MAX_INCREASE = "max_increase"

    def __str__(self) -> str:
        return self.value


GATE_OPS = tuple(op.value for op in GateOp)

_MODEL = {
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "description": "The .onnx file (relative to the spec's folder)."},
        "input": {"type": "string", "description": "The primary data input (data.x; the one perturbation checks "
                  "perturb), when the model has several. Default: the only float input, else the first."},
        "inputs": {"type": "object", "additionalProperties": {"anyOf": [
                       {"type": ["string", "array"], "items": {"type": "string"}},
                       {"type": "object", "additionalProperties": False, "properties": {
                           "key": {"type": ["string", "array"], "items": {"type": "string"}},
                           "batch_axis": {"type": "integer", "minimum": 0}}}]},
                   "description": "Other per-sample model inputs -> data key (npz key, or csv/parquet column(s)), "
                                  "e.g. {attention_mask: mask}, or {key: KEY, batch_axis: AXIS} to say which axis "
                                  "of that input carries the batch (the data holds its rows first). Default: the "
                                  "key named like the input; the axis sharing the primary input's batch "
                                  "dimension, or the one the shapes and the model leave."},
        "unbatched_outputs": {"enum": ["per_call"],
                              "description": "How to read an output without a batch axis (a detector's [300, 7] "
                                             "per image): per_call runs one sample per call and stacks each "
                                             "output as that sample's. Default: per-sample checks skip."},
        "vocab_size": {"type": "integer", "minimum": 2,
                       "description": "Number of valid ids of an integer (token id) primary input, when the graph's "
                                      "embedding table does not show it."},
        "output": {"type": "string", "description": "Tensor to audit: any tensor of the graph (the model is cut "
                   "to what it needs). Default: the graph's outputs."},
        "device": {"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$", "default": "auto",
                   "description": "auto (CUDA when it loads, else CPU), cpu, cuda or cuda:N."},
        "feeds": {"type": "object", "description": "Fixed values for inputs that are not data (e.g. keep_prob)."},
        "task": {"enum": [t.value for t in Task], "default": "auto",
                 "description": "How outputs are read; auto decides from the output shape and labels."},
        "layout": {"enum": ["NCHW", "NHWC", "nchw", "nhwc"],
                   "description": "Image layout, when the input shape does not make it clear."},
    },
}

_DATA = {
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "description": ".npz, .npy, .csv or .parquet, a folder of images (one "
                 "sub-folder per class) or a .csv/.parquet manifest of image paths (relative to the spec)."},
        "x": {"type": ["string", "array"], "items": {"type": "string"},
              "description": "Input key (npz) or feature columns (csv/parquet; default: all other columns)."},
        "y": {"type": "string", "description": "Label key or column (for .npy: a .npy file of labels)."},
        "groups": {"type": "array", "items": {"type": "string"},
                   "description": "Sensitive-attribute / group columns."},
        "columns": {"type": "array", "items": {"type": "string"},
                    "description": "Further columns checks may use (e.g. a bias-aligned flag)."},
        "limit": {"type": "integer", "minimum": 1,
                  "description": "Audit at most this many rows (a seeded sample, stratified by label)."},
        "batch_size": {"type": "integer", "minimum": 1, "default": 256, "description": "Inference batch size."},
        "images": {"type": "string", "description": "Manifest column of image paths (relative to the manifest)."},
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True,
                    "description": "Class names in the model's output order: folder names and string labels "
                                   "map to their position. Default: sorted names."},
        "preprocess": PREPROCESS_SCHEMA,
        "format": {"type": "string", "description": "Data source by name (images, or one a plugin registers); "
                   "default: detected from the path."},
        "options": {"type": "object", "description": "Settings of a plugin's data source."},
        "workers": {"type": "integer", "minimum": 1, "description": "Image decoding threads (default: cores)."},
    },
}

_GATE = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "min": {"type": "number", "description": "Fail if the metric is below this."},
        "max": {"type": "number", "description": "Fail if the metric is above this."},
        "max_drop": {"type": "number", "minimum": 0,
                     "description": "Fail if the metric fell by more than this against the baseline model."},
        "max_increase": {"type": "number", "minimum": 0,
                         "description": "Fail if the metric rose by more than this against the baseline model."},
        "severity": {"enum": ["fail", "warn"], "default": "fail"},
    },
}


def build_schema(checks: dict[str, CheckInfo], formats: list[str]) -> dict[str, Any]:
    """JSON Schema of a spec for the installed checks and report formats (``auditor schema``)."""
    names = sorted(checks)
    check_item: dict[str, Any] = {
        "type": "object",
        "required": ["use"],
        "additionalProperties": False,
        "properties": {
            "use": {"enum": names, "description": "The check to run (see `auditor checks`)."},
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+$",
                     "description": "Id of this entry in reports (default: the check's name)."},
            "with": {"type": "object", "description": "The check's parameters."},
            "gate": {"type": "object", "additionalProperties": _GATE,
                     "description": "Bounds per reported metric (dotted paths reach nested values)."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                          "description": "Mark the check as error if it runs longer than this."},
            "enabled": {"type": "boolean", "default": True},
        },
        "allOf": [
            {"if": {"properties": {"use": {"const": n}}, "required": ["use"]},
             "then": {"properties": {"with": checks[n].cls.params_schema()}}}
            for n in names
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "onnx-auditor spec",
        "type": "object",
        "required": ["version", "model", "checks"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1},
            "model": _MODEL,
            "baseline": _MODEL,
            "reference": _MODEL,
            "references": {"type": "object", "additionalProperties": _MODEL,
                           "description": "Several reference models, by name."},
            "data": _DATA,
            "train_data": _DATA,
            "seed": {"type": "integer", "minimum": 0, "default": 0},
            "execution": EXECUTION_SCHEMA,
            "checks": {"type": "array", "items": check_item},
            "report": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "dir": {"type": "string", "default": "reports"},
                    "formats": {"type": "array", "items": {"enum": formats}, "default": ["json", "markdown"]},
                },
            },
        },
    }


@dataclass(frozen=True)
class GateSpec:
    """Bounds on one metric."""

    metric: str
    bounds: dict[str, float]
    severity: str = "fail"


@dataclass(frozen=True)
class CheckSpec:
    """One ``checks:`` entry, with defaults filled in.

    ``skip_reason`` is set when the check will not run whatever happens (its plugin is disabled).
    """

    id: str
    use: str
    params: dict[str, Any]
    gates: list[GateSpec]
    timeout_s: float | None
    index: int
    line: int | None = None
    """1-based line of the entry's ``use:`` in the spec file (``None`` for a spec given as a dict)."""
    skip_reason: str | None = None


@dataclass
class Spec:
    """A validated spec; paths are resolved relative to the spec's folder."""

    path: Path
    model: ModelConfig
    checks: list[CheckSpec]
    data: DataConfig | None = None
    baseline: ModelConfig | None = None
    references: dict[str, ModelConfig] = field(default_factory=dict)
    train_data: DataConfig | None = None
    seed: int = 0
    report_dir: Path = Path("reports")
    formats: list[str] = field(default_factory=lambda: ["json", "markdown"])
    raw: dict[str, Any] = field(default_factory=dict)
    lines: dict[Path_, int] = field(default_factory=dict)
    """1-based line of every entry, by YAML path (``("checks", 0, "use")``); empty for a dict spec."""
    #: Where the checks run (``execution:``; ``None``: this machine).
    execution: ExecutionConfig | None = None

    def line_of(self, *path: str | int) -> int | None:
        """The line of ``path``, or of its nearest enclosing entry that has one."""
        return _line_of(self.lines, tuple(path))


def _line_of(lines: dict[Path_, int], path: tuple[Any, ...]) -> int | None:
    for k in range(len(path), 0, -1):
        if path[:k] in lines:
            return lines[path[:k]]
    return None


def _fmt_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _at(lines: dict[Path_, int], path: tuple[Any, ...]) -> str:
    n = _line_of(lines, path)
    return f" (line {n})" if n is not None else ""


def _explain(err: ValidationError, doc: Any, lines: dict[Path_, int] | None = None) -> str:
    """A readable message for one schema error, with its YAML path (and line) and a suggestion for typos."""
    lines = lines or {}
    apath = tuple(err.absolute_path)
    where = _fmt_path(apath)
    if err.validator == "additionalProperties":
        allowed = list((err.schema.get("properties") or {}).keys()) if isinstance(err.schema, dict) else []
        inst = err.instance if isinstance(err.instance, dict) else {}
        extra = [k for k in inst if k not in allowed]
        msgs = []
        for k in extra:
            key_path = f"{where}.{k}" if where != "(top level)" else str(k)
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
            msgs.append(f"{key_path}: unknown key{hint}{_at(lines, (*apath, k))}")
        return "; ".join(msgs)
    if err.validator == "enum" and list(err.absolute_path)[-1:] == ["use"]:
        names = list(err.validator_value) if isinstance(err.validator_value, list) else []
        close = difflib.get_close_matches(str(err.instance), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return (f"{where}: unknown check '{short(str(err.instance))}'{hint}{_at(lines, apath)}; "
                f"installed: {', '.join(names) or 'none'}")
    if err.validator == "required":
        key = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{where + '.' if where != '(top level)' else ''}{key}: required key missing{_at(lines, apath)}"
    if err.validator == "type":
        return f"{where}: {short(repr(err.instance))} is not of type {err.validator_value}{_at(lines, apath)}"
    return f"{where}: {short(err.message, 200)}{_at(lines, apath)}"


def load_yaml_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Read a YAML file safely (see :mod:`auditor.yamlio`): the document and the line of every entry.
    Errors name the file and the line."""
    path = Path(path)
    if not path.exists():
        raise SpecError(str(path), ["file not found"])
    if not path.is_file():
        raise SpecError(str(path), ["not a file"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"cannot read: {exc}"]) from None
    try:
        return _load_text(text)
    except YamlProblem as exc:
        raise SpecError(str(path), [str(exc)]) from None


def load_yaml(path: Path) -> Any:
    """Read a YAML file safely; errors name the file and the line."""
    return load_yaml_lines(path)[0]


def unknown_metric(metric: str, declared: list[str]) -> str | None:
    """Why a gate on ``metric`` can never be evaluated for a check declaring ``declared`` (``None``: it can).

    A gate may name a declared metric, reach inside one (``curve.-1.accuracy``, ``per_class_recall.3``) or
    match a declared pattern (``per_class_recall.*``). A check that declares no metrics is not checked.
    """
    if not declared:
        return None
    for name in declared:
        if metric == name or metric.startswith(name + ".") or ("*" in name and fnmatchcase(metric, name)):
            return None
        if name.endswith(".*") and metric == name[:-2]:
            return None
    plain = [n for n in declared if "*" not in n]
    close = difflib.get_close_matches(metric, plain, n=1) or difflib.get_close_matches(
        metric.split(".")[0], plain, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"the check never reports this metric ({hint}it reports: {', '.join(declared)})"


def _disabled_plugin(use: Any, disabled: frozenset[str]) -> str | None:
    """The disabled plugin whose check ``use`` names (by its ``<plugin>.`` prefix), if any."""
    if not isinstance(use, str) or "." not in use:
        return None
    prefix = use.split(".", 1)[0]
    return prefix if prefix in disabled else None


def parse_spec(path: Path, checks: dict[str, CheckInfo], formats: list[str],
               doc: Any | None = None, lines: dict[Path_, int] | None = None, *,
               disabled: frozenset[str] | set[str] = frozenset()) -> Spec:
    """Load and validate ``path`` against the installed checks; raise :class:`SpecError` with every problem.

    ``doc`` (with its ``lines``, optional) is used instead of reading ``path``. Checks of a plugin in
    ``disabled`` (``--disable``) are kept and will be reported as skipped; their parameters are not validated
    (the plugin is not loaded)."""
    path = Path(path)
    disabled = frozenset(disabled)
    if doc is None:
        doc, lines = load_yaml_lines(path)
    lines = dict(lines or {})
    if not isinstance(doc, dict):
        raise SpecError(str(path), ["the spec must be a YAML mapping (version, model, data, checks, ...)"])
    entries: list[Any] = doc["checks"] if isinstance(doc.get("checks"), list) else []
    off_idx = {i for i, e in enumerate(entries) if isinstance(e, dict) and _disabled_plugin(e.get("use"), disabled)}
    validator = Draft202012Validator(build_schema(checks, formats))
    errors = sorted((e for e in validator.iter_errors(doc)
                     if not (len(e.absolute_path) >= 2 and e.absolute_path[0] == "checks"
                             and e.absolute_path[1] in off_idx)),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    problems: list[str] = []
    for e in errors:
        if e.validator == "allOf" or e.validator == "if":
            continue
        msg = _explain(e, doc, lines)
        if msg and msg not in problems:
            problems.append(msg)
    # The rules below run on the same pass, so a spec with schema problems and, say, a gate on a metric its
    # check never reports shows both; each rule reads only the parts the schema found well-formed.
    bad = [tuple(e.absolute_path) for e in errors]

    def flagged(*where: str | int) -> bool:
        return any(b[:len(where)] == where for b in bad)

    problems += _path_problems(doc, lines)
    base = path.parent
    for key in ("data", "train_data"):
        d = doc.get(key)
        if isinstance(d, dict) and not flagged(key):
            problems.extend(_image_rules(d, key, base))
    parsed = _check_specs(doc, entries, checks, lines, disabled, base, flagged, problems)
    if problems:
        raise SpecError(str(path), sorted(problems, key=_entry_order))

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(os.path.normpath(base / q))

    def model_cfg(d: dict[str, Any]) -> ModelConfig:
        return ModelConfig(path=resolve(d["path"]), input=d.get("input"), output=d.get("output"),
                           device=d.get("device", "auto"), feeds=d.get("feeds"), task=d.get("task", "auto"),
                           layout=d.get("layout"), inputs=d.get("inputs"), vocab_size=d.get("vocab_size"),
                           unbatched_outputs=d.get("unbatched_outputs"))

    def data_cfg(d: dict[str, Any], role: str) -> DataConfig:
        return DataConfig(path=resolve(d["path"]), x=d.get("x"), y=d.get("y"), groups=list(d.get("groups", [])),
                          limit=d.get("limit"), batch_size=d.get("batch_size", 256),
                          columns=list(d.get("columns", [])), role=role, images=d.get("images"),
                          classes=d.get("classes"), preprocess=d.get("preprocess"), format=d.get("format"),
                          options=dict(d.get("options") or {}), workers=d.get("workers"))

    data = data_cfg(doc["data"], "data") if "data" in doc else None
    train = data_cfg(doc["train_data"], "train_data") if "train_data" in doc else None
    refs = {name: model_cfg(m) for name, m in (doc.get("references") or {}).items()}
    if "reference" in doc:
        refs = {"reference": model_cfg(doc["reference"]), **refs}

    report = doc.get("report") or {}
    return Spec(
        path=path,
        model=model_cfg(doc["model"]),
        checks=parsed,
        data=data,
        baseline=model_cfg(doc["baseline"]) if "baseline" in doc else None,
        references=refs,
        train_data=train,
        seed=int(doc.get("seed", 0)),
        report_dir=resolve(report.get("dir", "reports")),
        formats=list(report.get("formats", ["json", "markdown"])),
        raw=doc,
        lines=lines,
        execution=parse_execution(doc.get("execution")),
    )


def _entry_order(problem: str) -> int:
    """Sort key of a problem: the spec's sections first, then the ``checks:`` entries in order (stable within)."""
    m = re.match(r"checks\[(\d+)\]", problem)
    return int(m.group(1)) + 1 if m else 0


def _check_specs(doc: dict[str, Any], entries: list[Any], checks: dict[str, CheckInfo],
                 lines: dict[Path_, int], disabled: frozenset[str], base: Path,
                 flagged: Callable[..., bool], problems: list[str]) -> list[CheckSpec]:
    """The ``checks:`` entries as :class:`CheckSpec`; the rules the schema cannot express (unique ids, gates on
    metrics the check reports, parameter rules, what each check needs) append to ``problems``. An entry the
    schema found malformed is passed over where it is malformed (its problem is already reported)."""
    data = doc.get("data") if isinstance(doc.get("data"), dict) else None
    has_refs = bool(doc.get("references")) or "reference" in doc
    parsed: list[CheckSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("enabled", True):
            continue
        use, off = entry.get("use"), _disabled_plugin(entry.get("use"), disabled)
        if not isinstance(use, str) or (off is None and use not in checks):
            continue  # an unknown check: reported by the schema
        cid = str(entry.get("name", use))
        if cid in seen:
            problems.append(
                f"checks[{i}]: id '{cid}' is already used by checks[{seen[cid]}]; give one of them a 'name:'"
            )
            continue
        seen[cid] = i
        gate_doc = entry.get("gate")
        gates = []
        for metric, g in (gate_doc.items() if isinstance(gate_doc, dict) else ()):
            if off is None:
                why = unknown_metric(str(metric), checks[use].cls.metric_names())
                if why:
                    problems.append(f"checks[{i}].gate.{metric}: {why}")
            if not isinstance(g, dict) or flagged("checks", i, "gate", metric):
                continue  # a disabled plugin's entry (not validated) or a problem already reported
            bounds = {k: float(v) for k, v in g.items()
                      if k in GATE_OPS and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if any(not math.isfinite(v) for v in bounds.values()):
                problems.append(f"checks[{i}].gate.{metric}: bounds must be finite numbers"
                                f"{_at(lines, ('checks', i, 'gate', metric))}")
            if not bounds:
                problems.append(f"checks[{i}].gate.{metric}: give at least one of {', '.join(GATE_OPS)}")
            if ("max_drop" in bounds or "max_increase" in bounds) and "baseline" not in doc:
                problems.append(f"checks[{i}].gate.{metric}: max_drop/max_increase need a baseline: model")
            gates.append(GateSpec(metric, bounds, g.get("severity", "fail")))
        line = lines.get(("checks", i, "use"))
        if off is not None:
            given = entry.get("with")
            parsed.append(CheckSpec(cid, use, given if isinstance(given, dict) else {}, gates,
                                    entry.get("timeout_s"), i, line=line,
                                    skip_reason=f"plugin '{off}' is disabled (--disable {off})"))
            continue
        info = checks[use]
        params = {**info.cls.defaults(), **(entry.get("with") or {})}
        if not flagged("checks", i, "with"):
            try:
                typed = info.cls.build_params(params)
            except (TypeError, ValueError) as exc:
                problems.append(f"checks[{i}].with: {exc}")
            else:
                problems += [f"checks[{i}].with.{msg}" for msg in problems_of(typed)]
        needs = info.cls.needs
        for need, key, label in [(Need.DATA, "data", "data:"), (Need.TRAIN_DATA, "train_data", "train_data:")]:
            if need in needs and key not in doc:
                problems.append(f"checks[{i}] ({use}): needs a {label} section")
        if Need.LABELS in needs and data is not None and "y" not in data and not _npz_default_y(doc, base):
            problems.append(f"checks[{i}] ({use}): needs labels: set data.y")
        if Need.GROUPS in needs and data is not None and not data.get("groups"):
            problems.append(f"checks[{i}] ({use}): needs group columns: set data.groups")
        if Need.REFERENCE in needs and not has_refs:
            problems.append(f"checks[{i}] ({use}): needs a reference: (or references:) model")
        parsed.append(CheckSpec(cid, use, params, gates, entry.get("timeout_s"), i, line=line))
    return parsed


def _image_rules(d: dict[str, Any], key: str, base: Path) -> list[str]:
    """Cross-field rules of a data section with images or preprocessing, with YAML paths."""
    out: list[str] = []
    suffix = Path(str(d.get("path", ""))).suffix.lower()
    is_dir = (base / Path(str(d.get("path", ""))).expanduser()).is_dir()
    if d.get("images") is not None and suffix not in (".csv", ".parquet"):
        out.append(f"{key}.images: names a manifest column; {key}.path must be a .csv or .parquet manifest")
    pre = d.get("preprocess")
    if isinstance(pre, dict):
        out.extend(validate_preprocess(pre, f"{key}.preprocess"))
        if d.get("images") is None and not is_dir and suffix in (".npz", ".npy", ".csv", ".parquet"):
            steps = merged_preprocess(pre)
            for step in ("resize", "center_crop"):
                if steps.get(step) is not None:
                    out.append(f"{key}.preprocess.{step}: needs image files (a folder or a manifest with "
                               f"{key}.images); {suffix} arrays are used as stored")
    return out


def _path_problems(doc: dict[str, Any], lines: dict[Path_, int]) -> list[str]:
    """File paths the operating system could not take: a NUL byte, a ``~user`` with no such user."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for section in ("model", "baseline", "reference", "data", "train_data"):
        if isinstance(doc.get(section), dict):
            found.append(((section, "path"), doc[section].get("path")))
    for name, m in (doc.get("references") or {}).items():
        if isinstance(m, dict):
            found.append((("references", name, "path"), m.get("path")))
    if isinstance(doc.get("report"), dict):
        found.append((("report", "dir"), doc["report"].get("dir")))
    out = []
    for where, value in found:
        if not isinstance(value, str):
            continue
        problem = path_problem(value)
        if problem:
            out.append(f"{_fmt_path(where)}: {problem}{_at(lines, where)}")
    return out


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be used as a file path, or ``None``."""
    if "\0" in value:
        return f"{short(repr(value), 60)} contains a NUL byte"
    if value.startswith("~"):
        try:
            Path(value).expanduser()
        except RuntimeError:
            user = value[1:].split("/", 1)[0]
            return f"cannot expand '~{short(user, 40)}': no such user (or no home folder)"
    return None


def _npz_default_y(doc: dict[str, Any], base: Path) -> bool:
    """An .npz without an explicit ``y`` key still has labels when it stores an array called ``y``; an image
    folder has them in its class sub-folder names."""
    p = str(doc["data"].get("path", ""))
    return p.endswith(".npz") or (base / Path(p).expanduser()).is_dir()
