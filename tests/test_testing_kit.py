"""auditor.testing for plugin authors: ``save_model`` writes a model ONNX Runtime reads, and the ``auditor_cli``
fixture runs the real ``auditor`` command in a temporary folder (exit code, output, parsed report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from auditor.testing import IR_VERSION, CliRunner, make_linear_classifier, save_model


def _relu(opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset,want_ir", [(17, IR_VERSION), (21, 10)])
def test_save_model_writes_an_ir_onnxruntime_reads(tmp_path: Path, opset: int, want_ir: int) -> None:
    m = _relu(opset)
    assert m.ir_version > 13  # what onnx writes by default: ONNX Runtime 1.31 cannot read it
    path = save_model(m, tmp_path / "m.onnx")
    assert onnx.load(str(path)).ir_version == want_ir  # the lowest IR its opset allows when that is above 9
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))


def test_save_model_keeps_an_old_exporters_ir(tmp_path: Path) -> None:
    m = _relu(8)
    m.ir_version = 3
    assert onnx.load(str(save_model(m, tmp_path / "old.onnx"))).ir_version == 3


def _linear_audit(cli: CliRunner, gate_metric: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    make_linear_classifier(cli.path / "m.onnx", w, b)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    np.savez(cli.path / "d.npz", x=x, y=y)
    cli.write_spec({"model": {"path": "m.onnx"}, "data": {"path": "d.npz"},
                    "checks": [{"use": "performance.metrics", "gate": {gate_metric: {"min": 0.0}}}],
                    "report": {"dir": "out", "formats": ["json"]}})
    return (x.astype(np.float64) @ w + b).argmax(1), y


def test_auditor_cli_runs_the_real_command(auditor_cli: CliRunner) -> None:
    pred, y = _linear_audit(auditor_cli, "accuracy")
    result = auditor_cli.run("run", "spec.yaml").assert_exit(0)
    assert result.report_path == auditor_cli.path / "out" / "report.json"
    assert result.report.metrics("performance.metrics")["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert result.report.check("performance.metrics").status.value == "pass"
    assert "pass" in result.stdout.splitlines()[-1].lower()


def test_auditor_cli_reports_a_spec_error(auditor_cli: CliRunner) -> None:
    _linear_audit(auditor_cli, "acuracy")
    result = auditor_cli.run("run", "spec.yaml").assert_exit(2)
    assert len(result.errlines) == 1
    assert result.errlines[0].startswith("error: spec.yaml: checks[0].gate.acuracy: the check never reports this "
                                         "metric (did you mean 'accuracy'?")
    assert result.report_path is None
    with pytest.raises(AssertionError, match=r"wrote no report\.json"):
        _ = result.report
