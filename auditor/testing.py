"""A pytest plugin for plugin authors: build small models and data, run real audits, assert on results.

Loaded automatically by pytest (entry point ``pytest11``) when ``onnx-auditor[testing]`` is installed; the
auditor itself never imports this module (pytest is not a runtime dependency).

- :func:`save_model` writes an ``onnx.ModelProto`` that ONNX Runtime can read (the IR version pinned here, once).
- :func:`run_audit` runs an audit in-process and returns an :class:`AuditResult`; fixture ``audit_runner``.
- Fixture ``auditor_cli`` (a :class:`CliRunner`) runs the real ``auditor`` command in a temporary folder, as
  pytest's ``pytester`` runs pytest: exit code, stdout, stderr and the parsed report.json::

    def test_gate_fails(auditor_cli):
        auditor_cli.save_model(my_model_proto, "m.onnx")
        auditor_cli.write_spec({"model": {"path": "m.onnx"}, "checks": [{"use": "mine.flips"}]})
        result = auditor_cli.run("run", "spec.yaml")
        assert result.exit_code == 0 and result.report.check("mine.flips").status.value == "info"
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

from auditor.results import AuditReport, CheckReport

if TYPE_CHECKING:
    import onnx

#: The IR version :func:`save_model` writes. onnx 1.23 writes IR 14 by default, and ONNX Runtime reads only up
#: to the IR it was built with (13 for 1.31, 10 for 1.20); 9 is what every supported ONNX Runtime reads.
IR_VERSION = 9


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], **save_kwargs: Any) -> Path:
    """Write ``model`` to ``path`` so that ONNX Runtime can read it, and return the path.

    An IR version newer than :data:`IR_VERSION` (``onnx.helper.make_model`` writes the newest) is lowered to
    :data:`IR_VERSION`, or to the lowest IR that the model's opsets need; an older one (an old exporter's) is
    kept. ``model.ir_version`` is set in place. ``save_kwargs`` go to ``onnx.save_model`` (external data).
    """
    import onnx

    onnx.save_model(readable_ir(model), os.fspath(path), **save_kwargs)
    return Path(path)


def readable_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with an IR version ONNX Runtime reads (set in place, as :func:`save_model` does), for tests
    that hand ``model.SerializeToString()`` to ``onnxruntime.InferenceSession`` without writing a file."""
    from onnx import helper

    if model.ir_version > IR_VERSION or model.ir_version <= 0:
        needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        model.ir_version = max(IR_VERSION, needed)
    return model


def make_linear_classifier(path: Path, weight: np.ndarray, bias: np.ndarray, *, softmax: bool = True,
                           opset: int = 17, batch: int | str | None = "N",
                           input_name: str = "x", output_name: str = "probs") -> Path:
    """Write an ONNX model computing ``softmax(x @ weight + bias)`` (or the logits). ``weight`` is
    (features, classes). Written with :func:`save_model` (an IR version ONNX Runtime reads)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weight, np.float32), "W")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "B")
    nodes = [helper.make_node("Gemm", ["x_in", "W", "B"], ["logits" if softmax else output_name])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    nodes[0].input[0] = input_name
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, weight.shape[0]])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, weight.shape[1]])
    g = helper.make_graph(nodes, "linear", [x], [y], initializer=[w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="auditor.testing")
    return save_model(m, path)


@dataclass
class AuditResult:
    """The outcome of :func:`run_audit`: the exit code, the report, and assertion helpers."""

    exit_code: int
    report: AuditReport | None
    error: str | None = None

    @property
    def doc(self) -> dict[str, Any]:
        """The JSON report dict."""
        assert self.report is not None, self.error
        return self.report.to_dict()

    def check(self, check_id: str) -> CheckReport:
        """The report of one check by id."""
        assert self.report is not None, self.error
        for c in self.report.checks:
            if c.id == check_id:
                return c
        raise AssertionError(f"no check '{check_id}' in the report ({[c.id for c in self.report.checks]})")

    def metrics(self, check_id: str) -> dict[str, Any]:
        """Metrics of one check."""
        return self.check(check_id).metrics

    def assert_status(self, check_id: str, status: str) -> AuditResult:
        """Assert a check's status; the message shows its error, skip reason and gates."""
        c = self.check(check_id)
        assert c.status.value == status, (
            f"{check_id}: expected {status}, got {c.status.value} (error={c.error!r}, skip={c.skip_reason!r}, "
            f"gates={[g.message for g in c.gates]}, findings={[f.message for f in c.findings]})"
        )
        return self


def run_audit(spec: dict[str, Any] | str | Path, *, model: str | Path | None = None, data: str | Path | None = None,
              plugins: Iterable[object] = (), disable: Iterable[str] = (), workdir: Path | None = None,
              entry_points: bool = True) -> AuditResult:
    """Run a real audit in-process, as ``auditor run`` would, and return the result (reports not written).

    ``spec`` is a dict (``version`` defaults to 1; ``model``/``data`` may be given as keyword paths) or a
    path to a YAML file. ``plugins`` are extra plugin modules or objects (your plugin under test).
    """
    from auditor.distributed.errors import ClusterLost
    from auditor.errors import AuditorError, ExitCode
    from auditor.plugins import build_registry
    from auditor.results import OK_STATUSES
    from auditor.runner import Interrupted, load_inputs, make_runner
    from auditor.spec import parse_spec

    if isinstance(spec, (str, Path)):
        path = Path(spec)
        doc = None
    else:
        doc = {"version": 1, **spec}
        if model is not None:
            doc.setdefault("model", {"path": str(model)})
        if data is not None:
            doc.setdefault("data", {"path": str(data)})
        path = (workdir or Path.cwd()) / "spec.yaml"
    try:
        registry = build_registry(disable=disable, extra_plugins=plugins, use_entry_points=entry_points)
        parsed = parse_spec(path, registry.checks, sorted(registry.reporters), doc=doc, disabled=registry.disabled)
        loaded = load_inputs(parsed, registry.datasets)
        try:
            report = make_runner(parsed, registry).run(loaded)
        except Interrupted as exc:
            return AuditResult(int(ExitCode.INTERRUPTED), exc.report, "interrupted")
        except ClusterLost as exc:
            return AuditResult(int(exc.exit_code), exc.report, str(exc))
    except AuditorError as exc:
        return AuditResult(int(exc.exit_code), None, str(exc))
    code = ExitCode.OK if report.status in OK_STATUSES else ExitCode.GATE_FAILED
    return AuditResult(int(code), report)


@pytest.fixture
def audit_tmp(tmp_path: Path) -> Path:
    """A fresh folder for models, data and reports."""
    return tmp_path


@pytest.fixture
def audit_runner(tmp_path: Path) -> Callable[..., AuditResult]:
    """``run_audit`` bound to a temporary working folder."""

    def _run(spec: dict[str, Any] | str | Path, **kw: Any) -> AuditResult:
        kw.setdefault("workdir", tmp_path)
        return run_audit(spec, **kw)

    return _run


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    """Write a spec dict as YAML (``version: 1`` added)."""
    path.write_text(yaml.safe_dump({"version": 1, **doc}, sort_keys=False))
    return path


@dataclass
class CliResult:
    """What one ``auditor`` command did: exit code, output, and the report.json it wrote (if any)."""

    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    #: The report.json written by this command (the newest under the runner's folder), or None.
    report_path: Path | None = None
    _report: AuditReport | None = field(default=None, repr=False)

    @property
    def report(self) -> AuditReport:
        """The parsed report.json (an assertion error, with stderr, when the command wrote none)."""
        if self._report is None:
            assert self.report_path is not None, (
                f"auditor {' '.join(self.args)} wrote no report.json (exit {self.exit_code}): {self.stderr.strip()}")
            self._report = AuditReport.from_json(self.report_path)
        return self._report

    @property
    def errlines(self) -> list[str]:
        """Non-empty lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def assert_exit(self, code: int) -> CliResult:
        """Assert the exit code; the message shows the command's stderr."""
        assert self.exit_code == code, (
            f"auditor {' '.join(self.args)}: exit {self.exit_code}, expected {code}\nstderr:\n{self.stderr}")
        return self


class CliRunner:
    """Runs the real ``auditor`` command (``python -m auditor``, a fresh process) with ``path`` as its working
    folder, like pytest's ``pytester``. The child's ``PYTHONPATH`` starts with ``path`` (so ``-p my_module`` finds
    modules written there) and then the parent's ``sys.path``, so it imports the same auditor and plugins."""

    def __init__(self, path: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.env = dict(env or {})

    def save_model(self, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        """Write a model into the folder with :func:`save_model`."""
        return save_model(model, self.path / name)

    def write_spec(self, doc: dict[str, Any], name: str = "spec.yaml") -> Path:
        """Write a spec dict into the folder (``version: 1`` added)."""
        return write_spec(self.path / name, doc)

    def run(self, *args: str | os.PathLike[str], timeout: float = 600, env: Mapping[str, str] | None = None,
            stdin: str | None = None) -> CliResult:
        """Run ``auditor ARGS...`` and wait for it (``timeout`` seconds at most)."""
        argv = tuple(os.fspath(a) for a in args)
        paths = [str(self.path), *(p for p in sys.path if p)]
        child_env = {**os.environ, **self.env, **(env or {}), "PYTHONPATH": os.pathsep.join(paths)}
        before = {p: p.stat().st_mtime_ns for p in self.path.rglob("report.json")}
        proc = subprocess.run([sys.executable, "-m", "auditor", *argv], cwd=self.path, env=child_env,
                              input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        written = [p for p in self.path.rglob("report.json") if before.get(p) != p.stat().st_mtime_ns]
        newest = max(written, key=lambda p: p.stat().st_mtime_ns) if written else None
        return CliResult(argv, proc.returncode, proc.stdout, proc.stderr, newest)


@pytest.fixture
def auditor_cli(tmp_path: Path) -> CliRunner:
    """A :class:`CliRunner` in a fresh temporary folder: ``auditor_cli.run("run", "spec.yaml")``."""
    return CliRunner(tmp_path)
