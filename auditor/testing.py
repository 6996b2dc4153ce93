"""A pytest plugin for plugin authors: build small models and data, run real audits, assert on results.

Loaded automatically (entry point ``pytest11``). Fixtures: ``audit_tmp`` (a folder), ``run_audit``::

    def test_my_check(run_audit, tiny_classifier):
        result = run_audit({"checks": [{"use": "mine.thing"}]}, model=tiny_classifier.model,
                           data=tiny_classifier.data, plugins=[my_plugin_module])
        result.assert_status("mine.thing", "info")   # ran, no gate: nothing asserted
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from auditor.results import AuditReport, CheckReport


def make_linear_classifier(path: Path, weight: np.ndarray, bias: np.ndarray, *, softmax: bool = True,
                           opset: int = 17, ir_version: int = 9, batch: int | str | None = "N",
                           input_name: str = "x", output_name: str = "probs") -> Path:
    """Write an ONNX model computing ``softmax(x @ weight + bias)`` (or the logits). ``weight`` is
    (features, classes). ``ir_version`` is set explicitly: onnx writes a newer IR than ONNX Runtime reads."""
    from onnx import TensorProto, helper, numpy_helper, save

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
    m.ir_version = ir_version
    save(m, str(path))
    return Path(path)


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
