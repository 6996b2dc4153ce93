"""``auditor init MODEL`` without data gates the weights checks on defects no healthy model has: NaN / infinite
weights, a layer weight that is zero throughout, a convolution whose every filter is degenerate. A healthy CNN
passes; each planted defect fails its gate, with the counts checked against numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from builders import FLOAT, save_model
from click.testing import CliRunner
from onnx import helper

from auditor.cli import main


def cnn(path: Path, k1: np.ndarray, k2: np.ndarray, fc: np.ndarray) -> Path:
    """x (N,1,6,6) -> Conv k1 (4,1,3,3) -> Relu -> Conv k2 (4,4,3,3) -> Relu -> GAP -> Flatten -> MatMul fc (4,3)."""
    nodes = [helper.make_node("Conv", ["x", "k1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "k2"], ["b"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["b"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["z"])]
    return save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 1, 6, 6])],
                      [helper.make_tensor_value_info("z", FLOAT, ["N", 3])], {"k1": k1, "k2": k2, "fc": fc}, path)


def weights() -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {"k1": r.normal(size=(4, 1, 3, 3)).astype(np.float32), "k2": r.normal(size=(4, 4, 3, 3)).astype(np.float32),
            "fc": r.normal(size=(4, 3)).astype(np.float32)}


def init_and_run(tmp_path: Path, model: Path) -> tuple[str, int, dict[str, Any]]:
    spec = tmp_path / "spec.yaml"
    res = CliRunner().invoke(main, ["init", str(model), "-o", str(spec)])
    assert res.exit_code == 0, res.output
    run = CliRunner().invoke(main, ["run", str(spec), "--report-dir", str(tmp_path / "r"), "-q"])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    return spec.read_text(), run.exit_code, {c["id"]: c for c in report["checks"]}


def failed(check: dict[str, Any]) -> dict[str, float]:
    return {g["metric"]: g["value"] for g in check["gates"] if g["status"] != "pass"}


def test_the_written_gates_and_a_healthy_cnn_passes(tmp_path: Path) -> None:
    text, code, checks = init_and_run(tmp_path, cnn(tmp_path / "m.onnx", **weights()))
    gates = {c["use"]: c.get("gate") for c in yaml.safe_load(text)["checks"]}
    assert gates == {"sparsity.profile": {"nonfinite": {"max": 0}, "all_zero_weights": {"max": 0}},
                     "sparsity.filters": {"degenerate_layers": {"max": 0}}, "sparsity.conditioning": None}
    assert code == 0
    assert {k: c["status"] for k, c in checks.items()} == {"sparsity.profile": "pass", "sparsity.filters": "pass",
                                                          "sparsity.conditioning": "info"}
    assert checks["sparsity.profile"]["metrics"]["nonfinite"] == 0


@pytest.mark.parametrize("defect", ["nan", "inf", "zero_layer", "constant_fill"])
def test_each_planted_defect_fails_its_gate(tmp_path: Path, defect: str) -> None:
    w = weights()
    if defect in ("nan", "inf"):
        w["k2"][1, 2, 0, [0, 2]] = np.nan if defect == "nan" else -np.inf
        w["fc"][3, 1] = np.nan if defect == "nan" else np.inf
    elif defect == "zero_layer":
        w["fc"][:] = 0
    else:  # every filter one value, as in onnx's light_* test models (0.02 throughout)
        w["k2"][:] = 0.02
    _, code, checks = init_and_run(tmp_path, cnn(tmp_path / "m.onnx", **w))
    assert code == 1
    profile, filters = checks["sparsity.profile"], checks["sparsity.filters"]
    if defect in ("nan", "inf"):
        want = {name: int(np.sum(~np.isfinite(v))) for name, v in w.items()}
        assert {k: e["nonfinite"] for k, e in profile["metrics"]["weights"].items()} == want == {"k1": 0, "k2": 2,
                                                                                              "fc": 1}
        assert failed(profile) == {"nonfinite": 3}
        # no filter statistics or singular values of a weight that has none: skipped, saying which
        assert filters["status"] == checks["sparsity.conditioning"]["status"] == "skipped"
        assert "weight 'k2' of" in filters["skip_reason"] and "NaN / infinite" in filters["skip_reason"]
    elif defect == "zero_layer":
        assert failed(profile) == {"all_zero_weights": 1} and filters["status"] == "pass"
    else:
        assert profile["status"] == "pass" and failed(filters) == {"degenerate_layers": 1}
        assert filters["metrics"]["layers"]["k2"]["constant_filters"] == 4


def test_a_model_without_layers_gets_ungated_weights_checks(tmp_path: Path) -> None:
    """Without a Conv / Gemm / MatMul both weights checks skip, and a gate on a skipped check would fail."""
    model = save_model([helper.make_node("Softmax", ["x"], ["p"], axis=1)],
                       [helper.make_tensor_value_info("x", FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("p", FLOAT, ["N", 3])], {}, tmp_path / "s.onnx")
    text, code, checks = init_and_run(tmp_path, model)
    assert [c.get("gate") for c in yaml.safe_load(text)["checks"]] == [None, None]
    assert code == 0 and {c["status"] for c in checks.values()} == {"skipped"}


def test_a_one_weight_depthwise_conv_is_not_degenerate(tmp_path: Path) -> None:
    """A 1x1 depthwise conv (a BatchNorm folded into a conv: one scale per channel) has one weight a filter, which
    has no spread to lose: its filters are not "constant", and the healthy model passes the gates."""
    w = weights()
    scales = np.array([0.5, -1.25, 2.0, 0.75], np.float32).reshape(4, 1, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "k1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "dw"], ["b"], group=4), helper.make_node("Relu", ["b"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["z"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 1, 6, 6])],
                       [helper.make_tensor_value_info("z", FLOAT, ["N", 3])],
                       {"k1": w["k1"], "dw": scales, "fc": w["fc"]}, tmp_path / "dw.onnx")
    _, code, checks = init_and_run(tmp_path, model)
    layer = checks["sparsity.filters"]["metrics"]["layers"]["dw"]
    assert (layer["filters"], layer["constant_filters"], layer["degenerate_filters"]) == (4, 0, 0)
    assert checks["sparsity.filters"]["metrics"]["degenerate_layers"] == 0 and code == 0
