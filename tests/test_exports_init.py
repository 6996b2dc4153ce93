"""``auditor init MODEL`` without ``--data`` writes a spec that runs as written (#15): weights checks only, the
data block commented with what to do; a model with a scalar placeholder or several inputs too. The weights'
numbers are checked against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from builders import FLOAT, mlp_weights, save_model, write_mlp
from click.testing import CliRunner
from onnx import helper

from auditor.cli import main


def keep_prob_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    w = {"W": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "keep_prob"], ["xk"]), helper.make_node("MatMul", ["xk", "W"], ["z"])]
    return save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                              helper.make_tensor_value_info("keep_prob", FLOAT, [])],
                      [helper.make_tensor_value_info("z", FLOAT, ["N", 3])], w, tmp_path / "tf.onnx"), w


def two_input_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    r = np.random.default_rng(1)
    w = {"W": r.normal(size=(4, 3)).astype(np.float32), "U": r.normal(size=(3, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["h", "U"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["z"])]
    return save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                              helper.make_tensor_value_info("h", FLOAT, ["N", 3])],
                      [helper.make_tensor_value_info("z", FLOAT, ["N", 3])], w, tmp_path / "two.onnx"), w


@pytest.mark.parametrize("kind", ["mlp", "keep_prob", "two_inputs"])
def test_init_without_data_writes_a_spec_that_runs_as_written(tmp_path: Path, kind: str) -> None:
    if kind == "mlp":
        w = mlp_weights()
        model = write_mlp(tmp_path / "mlp.onnx", w)
    else:
        model, w = keep_prob_model(tmp_path) if kind == "keep_prob" else two_input_model(tmp_path)
    spec = tmp_path / "spec.yaml"
    res = CliRunner().invoke(main, ["init", str(model), "-o", str(spec)])
    assert res.exit_code == 0, res.output
    text = spec.read_text()
    doc = yaml.safe_load(text)
    assert "data" not in doc  # commented, with the instructions
    assert "# data:" in text and "#   path: test.npz" in text and "--data FILE" in text
    assert [c["use"] for c in doc["checks"]] == ["sparsity.profile", "sparsity.conditioning"]

    res = CliRunner().invoke(main, ["run", str(spec), "--report-dir", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    import json

    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    checks = {c["id"]: c for c in rep["checks"]}
    assert {c["status"] for c in checks.values()} <= {"info", "pass"}
    mats = [v for k, v in w.items() if np.ndim(v) == 2]
    prof = checks["sparsity.profile"]["metrics"]
    assert prof["params"] == sum(m.size for m in mats)
    cond = checks["sparsity.conditioning"]["metrics"]
    want = max(float(np.linalg.svd(m.astype(np.float64), compute_uv=False)[0]) for m in mats)
    assert cond["max_spectral_norm"] == pytest.approx(want, rel=1e-9)


def test_a_scalar_input_without_a_value_still_stops_an_audit_that_runs_the_model(tmp_path: Path) -> None:
    model, _ = keep_prob_model(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(model)}, "data": {"path": "d.npz"},
                                    "checks": [{"use": "robustness.noise"}]}))
    res = CliRunner().invoke(main, ["run", str(spec), "--report-dir", str(tmp_path / "r")])
    assert res.exit_code == 4
    assert "keep_prob are needed for z but are scalars, not data; give them values with model.feeds" in res.output
