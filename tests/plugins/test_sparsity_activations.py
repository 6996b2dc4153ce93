"""``sparsity.activations``: planted dead units and an exactly collapsed penultimate layer; one CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from auditor_sparsity.activations import neural_collapse
from click.testing import CliRunner
from onnx import helper
from sparsity_helpers import FLOAT, OTHER_PLUGINS, save

from auditor.cli import main
from auditor.testing import run_audit, write_spec


def dead_mlp(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """x (N,6) -> Gemm fc1 (10 units; 2 and 7 dead: zero weights, bias -1; 5 constant 1) -> Relu -> Gemm head
    (3 classes) -> Softmax; data with labels."""
    r = np.random.default_rng(0)
    w1 = r.normal(size=(6, 10)).astype(np.float32)
    b1 = np.zeros(10, np.float32)
    w1[:, [2, 5, 7]] = 0
    b1[[2, 7]], b1[5] = -1.0, 1.0
    w2 = r.normal(size=(10, 3)).astype(np.float32)
    w = {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["z"], name="head"),
             helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 6]),
                helper.make_tensor_value_info("probs", FLOAT, ["N", 3]), w, tmp_path / "mlp.onnx")
    x = r.normal(size=(240, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 80)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    return path, data, w, x, y


def nc_reference(h: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Papyan et al.'s NC1 and the ETF distance written out class by class (independent of the plugin)."""
    classes = sorted(set(y.tolist()))
    c = len(classes)
    mu_g = h.mean(axis=0)
    means = {k: h[y == k].mean(axis=0) for k in classes}
    d = h.shape[1]
    sw = np.zeros((d, d))
    for i in range(len(h)):
        dv = h[i] - means[int(y[i])]
        sw += np.outer(dv, dv)
    sw /= len(h)
    m = np.stack([means[k] - mu_g for k in classes], axis=1)  # (D, C)
    sb = m @ m.T / c
    gram = m.T @ m
    etf = np.eye(c) - 1.0 / c
    return {"nc1": float(np.trace(sw @ np.linalg.pinv(sb)) / c),
            "etf_distance": float(np.linalg.norm(gram / np.linalg.norm(gram) - etf / np.linalg.norm(etf)))}


def test_dead_units_zero_fraction_and_rank(tmp_path: Path) -> None:
    path, data, w, x, y = dead_mlp(tmp_path)
    res = run_audit({"checks": [{"use": "sparsity.activations"}]}, model=path, data=data, workdir=tmp_path,
                    disable=OTHER_PLUGINS)
    res.assert_status("sparsity.activations", "info")
    m = res.metrics("sparsity.activations")
    h = np.maximum(x.astype(np.float64) @ w["w1"] + w["b1"], 0)  # the Relu output in numpy
    e = m["layers"]["hr"]
    assert e["units"] == 10 and e["op_type"] == "Relu"
    assert e["dead_unit_indices"] == [2, 7] == np.flatnonzero(h.max(axis=0) <= 0).tolist()
    assert e["dead_units"] == 2 and e["dead_fraction"] == pytest.approx(0.2)
    assert e["zero_fraction"] == pytest.approx(np.mean(h == 0))
    s = np.linalg.svd(h - h.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    assert e["effective_rank"] == pytest.approx(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rel=1e-4)
    var = s**2 / np.sum(s**2)
    assert e["rank_99"] == int(np.argmax(np.cumsum(var) >= 0.99) + 1)
    assert e["rank_99"] <= 7  # two dead and one constant unit carry no variance
    assert (m["units"], m["dead_units"], m["samples"]) == (10, 2, 240)
    nc = m["neural_collapse"]
    assert nc["features"] == "hr" and nc["classes"] == 3
    ref = nc_reference(h, y)
    assert nc["nc1"] == pytest.approx(ref["nc1"], rel=1e-4)
    assert nc["etf_distance"] == pytest.approx(ref["etf_distance"], rel=1e-4)


def test_neural_collapse_exact_simplex(tmp_path: Path) -> None:
    """Penultimate features sit exactly on a shifted simplex ETF (no within-class spread) and the head's
    rows are the centred class means: every collapse measure is 0 (cosines -1/(C-1))."""
    c = 4
    etf = np.sqrt(c / (c - 1)) * (np.eye(c) - 1.0 / c)  # rows: vertices of a simplex ETF in R^4
    shift = 1.0  # keeps features positive, so the Relu in front of the head is the identity
    y = np.repeat(np.arange(c), 25)
    x = (etf[y] + shift).astype(np.float32)
    head = etf.astype(np.float32)  # (C, D) used with transB
    nodes = [helper.make_node("Relu", ["x"], ["feat"], name="relu"),
             helper.make_node("Gemm", ["feat", "head", "hb"], ["z"], name="head", transB=1),
             helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    path = save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", c]),
                helper.make_tensor_value_info("probs", FLOAT, ["N", c]),
                {"head": head, "hb": np.zeros(c, np.float32)}, tmp_path / "etf.onnx")
    data = tmp_path / "etf.npz"
    np.savez(data, x=x, y=y)
    res = run_audit({"checks": [{"use": "sparsity.activations", "with": {"layers": ["feat"]}}]}, model=path,
                    data=data, workdir=tmp_path, disable=OTHER_PLUGINS)
    nc = res.metrics("sparsity.activations")["neural_collapse"]
    assert nc["classes"] == c
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-10)
    assert nc["etf_distance"] == pytest.approx(0.0, abs=1e-6)
    assert nc["equinorm_cv"] == pytest.approx(0.0, abs=1e-6)
    assert nc["equiangular_std"] == pytest.approx(0.0, abs=1e-6)
    assert nc["mean_cosine"] == pytest.approx(-1 / (c - 1), rel=1e-6)
    assert nc["nc3_self_duality"] == pytest.approx(0.0, abs=1e-6)


def test_neural_collapse_against_reference_on_noisy_features() -> None:
    r = np.random.default_rng(4)
    y = r.integers(0, 5, 300)
    h = r.normal(size=(300, 7)) + 3 * r.normal(size=(5, 7))[y]
    got = neural_collapse(h, y)
    ref = nc_reference(h, y)
    assert got["nc1"] == pytest.approx(ref["nc1"], rel=1e-9)
    assert got["etf_distance"] == pytest.approx(ref["etf_distance"], rel=1e-9)
    norms = np.array([np.linalg.norm(h[y == k].mean(0) - h.mean(0)) for k in range(5)])
    assert got["equinorm_cv"] == pytest.approx(norms.std() / norms.mean(), rel=1e-9)


def test_cli_run_writes_report_and_gates(tmp_path: Path) -> None:
    path, data, _, _, _ = dead_mlp(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", {
        "model": {"path": str(path)}, "data": {"path": str(data)},
        "report": {"dir": str(tmp_path / "out"), "formats": ["json"]},
        "checks": [{"use": "sparsity.activations", "gate": {"dead_fraction": {"max": 0.1}}},
                   {"use": "sparsity.profile"}, {"use": "sparsity.conditioning"}],
    })
    out = CliRunner().invoke(main, ["run", str(spec), "-q", *(f"--disable={p}" for p in OTHER_PLUGINS)])
    assert out.exit_code != 0, out.output  # 2 of 10 units dead > 0.1
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    checks = {c["use"]: c for c in doc["checks"]}
    assert checks["sparsity.activations"]["status"] == "fail"
    assert checks["sparsity.activations"]["metrics"]["dead_fraction"] == pytest.approx(0.2)
    assert checks["sparsity.profile"]["metrics"]["weights"]["w1"]["zero_output_indices"] == [2, 5, 7]
    assert checks["sparsity.conditioning"]["metrics"]["head"] == "w2"


def if_model(tmp_path: Path, *, relu_after: bool) -> Path:
    """x (N,4) -> If 'cf' (then: Relu; else: Tanh -> Sigmoid; the condition a constant true) -> [Relu] -> Gemm ->
    Softmax: the nonlinearities inside the branches cannot be read as model outputs."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", FLOAT, ["N", 4])])
    else_g = helper.make_graph([helper.make_node("Tanh", ["x"], ["e1"]), helper.make_node("Sigmoid", ["e1"], ["e"])],
                               "else", [], [helper.make_tensor_value_info("e", FLOAT, ["N", 4])])
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", onnx.TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["c"], ["h"], name="cf", then_branch=then_g, else_branch=else_g)]
    feat = "h"
    if relu_after:
        nodes.append(helper.make_node("Relu", ["h"], ["hr"], name="relu"))
        feat = "hr"
    nodes += [helper.make_node("Gemm", [feat, "w", "b"], ["z"], name="head"),
              helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    r = np.random.default_rng(2)
    return save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                helper.make_tensor_value_info("probs", FLOAT, ["N", 3]),
                {"w": r.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)},
                tmp_path / f"if_{relu_after}.onnx")


def test_nonlinearities_inside_if_branches_are_named_in_the_skip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "nolabels.npz", x=x)
    res = run_audit({"checks": [{"use": "sparsity.activations"}]}, model=if_model(tmp_path, relu_after=False),
                    data=tmp_path / "nolabels.npz", workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.activations", "skipped")
    reason = res.check("sparsity.activations").skip_reason
    assert reason == ("no layers to analyse: the 3 nonlinearities inside control-flow subgraphs (Relu x1, "
                      "Sigmoid x1, Tanh x1; in node 'cf'), whose values ONNX Runtime does not return; set layers:")
    # a main-graph nonlinearity after the If is analysed; the report says what was not
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    res = run_audit({"checks": [{"use": "sparsity.activations"}]}, model=if_model(tmp_path, relu_after=True),
                    data=tmp_path / "d.npz", workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.activations", "info")
    c = res.check("sparsity.activations")
    h = np.maximum(x.astype(np.float64), 0)  # then branch: Relu(x), then the main Relu
    assert list(c.metrics["layers"]) == ["hr"] and c.metrics["zero_fraction"] == pytest.approx(np.mean(h == 0))
    assert any(n.startswith("not analysed: the 3 nonlinearities inside control-flow subgraphs") for n in c.notes)


def test_a_regressor_gets_no_neural_collapse(tmp_path: Path) -> None:
    """A regressor's targets are no classes: dead units as for a classifier, neural collapse not measured (it
    used to take the float targets for class indices and error)."""
    _, _, w, x, _ = dead_mlp(tmp_path)
    w = {**w, "w2": w["w2"][:, :1].copy(), "b2": w["b2"][:1].copy()}  # one regression value, no Softmax
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["z"], name="head")]
    save(nodes, helper.make_tensor_value_info("x", FLOAT, ["N", 6]),
         helper.make_tensor_value_info("z", FLOAT, ["N", 1]), w, tmp_path / "reg.onnx")
    np.savez(tmp_path / "r.npz", x=x, y=x[:, 0] * 0.5)
    res = run_audit({"checks": [{"use": "sparsity.activations"}], "model": {"path": "reg.onnx", "task": "regression"},
                     "data": {"path": "r.npz"}}, workdir=tmp_path, disable=OTHER_PLUGINS)
    res.assert_status("sparsity.activations", "info")
    m = res.metrics("sparsity.activations")
    h = np.maximum(x.astype(np.float64) @ w["w1"] + w["b1"], 0)
    assert m["layers"]["hr"]["dead_unit_indices"] == [2, 7] == np.flatnonzero(h.max(axis=0) <= 0).tolist()
    assert "neural_collapse" not in m
    assert "neural collapse needs class labels: not measured on a regressor" in res.check("sparsity.activations").notes
