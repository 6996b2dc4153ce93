"""Training rules and torch.retrain: feedback alignment really uses fixed random feedback weights, DFA sends
the output error directly, SAM's ascent step, and retraining end to end (accuracy, feature rank and dead
units recomputed from the written-back ONNX models with onnxruntime, numpy and scikit-learn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from auditor_torch.interpreter import build_module  # noqa: E402
from auditor_torch.training import (  # noqa: E402
    DirectFeedbackAlignment,
    FeedbackAlignment,
    parameter_roles,
    sam_perturb,
)
from torch_helpers import digits, export, mlp, small_cnn  # noqa: E402

from auditor.testing import run_audit  # noqa: E402

RNG = np.random.default_rng(5)


def two_layer() -> tuple[Any, list[str], np.ndarray, np.ndarray]:
    """An interpreted 4-5-3 ReLU MLP, its weight names (graph order), and a batch."""
    model = export(mlp([4, 5, 3], seed=1), torch.zeros(2, 4))
    module = build_module(model)
    roles = parameter_roles(module)
    weights = [n for n, r in roles.items() if r.kind == "weight"]
    x = RNG.standard_normal((8, 4)).astype(np.float32)
    y = RNG.integers(0, 3, 8)
    return module, weights, x, y


def logits_of(module: Any, x: np.ndarray) -> Any:
    softmax = next(n for n in module.graph.node if n.op_type == "Softmax")
    return module.forward_many(torch.from_numpy(x), [softmax.input[0]])[softmax.input[0]]


def manual(module: Any, weights: list[str], x: np.ndarray, y: np.ndarray, feedback: np.ndarray) -> tuple[Any, ...]:
    """Closed-form gradients of mean cross-entropy for the 2-layer MLP when the error reaches the hidden layer
    as e @ feedback (feedback = W2 for backprop, B for FA/DFA)."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in module.named_onnx_parameters().items()}
    w1, w2 = p[weights[0]], p[weights[1]]
    b1 = next(v for k, v in p.items() if v.shape == (5,))
    a1 = x @ w1.T + b1
    h = np.maximum(a1, 0)
    z = h @ w2.T + next(v for k, v in p.items() if v.shape == (3,))
    s = np.exp(z - z.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    e = (s - np.eye(3)[y]) / len(y)
    g1 = ((e @ feedback) * (a1 > 0)).T @ x
    g2 = e.T @ h
    return g1, g2, e


@pytest.mark.parametrize("rule_cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_feedback_rules_use_fixed_random_weights(rule_cls: type) -> None:
    """FA: δ_hidden = e B (B fixed, random, shape of W2); DFA: δ_hidden = e B_l straight from the output
    error. Neither equals backprop's e W2, the output layer's gradient is exact, B never changes."""
    module, weights, x, y = two_layer()
    rule = rule_cls(module, parameter_roles(module), torch.Generator().manual_seed(0))
    module.rule = rule
    params = list(module.named_onnx_parameters().values())
    for t in params:
        t.requires_grad_(True)
    z = logits_of(module, x)
    rule.capture(z)
    torch.nn.functional.cross_entropy(z, torch.from_numpy(y)).backward()
    b = rule.feedback[weights[1]].detach().numpy().astype(np.float64)
    assert b.shape == ((3, 5))
    w2 = module.named_onnx_parameters()[weights[1]].detach().numpy().astype(np.float64)
    g1, g2, _ = manual(module, weights, x, y, b)
    g1_bp, _, _ = manual(module, weights, x, y, w2)
    got1 = module.named_onnx_parameters()[weights[0]].grad.numpy()
    got2 = module.named_onnx_parameters()[weights[1]].grad.numpy()
    np.testing.assert_allclose(got1, g1, atol=1e-6)
    np.testing.assert_allclose(got2, g2, atol=1e-6)
    assert np.abs(got1 - g1_bp).max() > 1e-3  # not the transposed forward weights
    b0 = rule.feedback[weights[1]].clone()
    opt = torch.optim.SGD(params, lr=0.5)
    w_before = module.named_onnx_parameters()[weights[1]].detach().clone()
    for _ in range(3):
        opt.zero_grad()
        z = logits_of(module, x)
        rule.capture(z)
        torch.nn.functional.cross_entropy(z, torch.from_numpy(y)).backward()
        opt.step()
    assert torch.equal(rule.feedback[weights[1]], b0)
    assert not torch.equal(module.named_onnx_parameters()[weights[1]].detach(), w_before)


def test_forward_value_is_unchanged_by_rules() -> None:
    module, _, x, _ = two_layer()
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    module.rule = FeedbackAlignment(module, parameter_roles(module), torch.Generator().manual_seed(0))
    for t in module.parameters():
        t.requires_grad_(True)
    assert torch.equal(module(torch.from_numpy(x).requires_grad_(True)).detach(), ref)


def test_sam_ascent_step() -> None:
    """SAM moves to w + ρ g / ‖g‖ (global norm over all parameters)."""
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([[0.5]]))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])
    sam_perturb([a, b], 0.5)
    np.testing.assert_allclose(a.detach().numpy(), [1.0 + 0.5 * 3 / 5, 2.0])
    np.testing.assert_allclose(b.detach().numpy(), [[0.5 + 0.5 * 4 / 5]])


def test_roles_skip_graph_constants() -> None:
    """Weights and biases are trained; a scalar constant (the √2 of a decomposed GELU) is not."""
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "B"),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Div", ["a", "sqrt2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], initializer=inits)
    roles = parameter_roles(build_module(helper.make_model(g)))
    assert {k: v.kind for k, v in roles.items()} == {"W": "weight", "B": "bias"}
    assert roles["W"].fan_in == 4


def ort_features(path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, input of the last Gemm) of a saved model, computed with onnxruntime directly."""
    m = onnx.load(path)
    pen = [n for n in m.graph.node if n.op_type == "Gemm"][-1].input[0]
    m.graph.output.append(helper.make_tensor_value_info(pen, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, feats = sess.run(None, {"x": x})
    return probs, feats


def check_run(run: dict, x: np.ndarray, y: np.ndarray, original: onnx.ModelProto) -> None:
    from sklearn.decomposition import PCA
    from sklearn.metrics import accuracy_score

    probs, feats = ort_features(run["model_path"], x)
    assert run["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    ratio = np.cumsum(PCA().fit(feats.astype(np.float64)).explained_variance_ratio_)
    assert run["feature_rank"] == int(np.argmax(ratio >= 0.99 - 1e-9)) + 1
    assert run["dead_units"] == int(np.all(feats == 0, axis=0).sum())
    assert run["units"] == feats.shape[1]
    assert run["dead_fraction"] == pytest.approx(run["dead_units"] / feats.shape[1])
    saved = onnx.load(run["model_path"])
    assert [(n.op_type, list(n.input), list(n.output)) for n in saved.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in original.graph.node]
    assert [i.name for i in saved.graph.initializer] == [i.name for i in original.graph.initializer]


def test_cnn_retrained_from_scratch(tmp_path: Path) -> None:
    """A small CNN from re-initialised weights on digits: backprop reaches high accuracy, feedback
    alignment well above chance (0.1); DTP is reported as not applicable to convolutions."""
    xtr, ytr, xte, yte = digits()
    np.savez(tmp_path / "train.npz", x=xtr, y=ytr)
    np.savez(tmp_path / "test.npz", x=xte, y=yte)
    original = export(small_cnn(), torch.zeros(2, 1, 8, 8), tmp_path / "cnn.onnx")
    rules = ["backprop", "feedback_alignment", "difference_target_propagation"]
    res = run_audit({"train_data": {"path": str(tmp_path / "train.npz")},
                     "checks": [{"use": "torch.retrain", "with": {"reinit": True, "epochs": 3, "rules": rules,
                                                                  "save_dir": str(tmp_path / "out")}}]},
                    model=tmp_path / "cnn.onnx", data=tmp_path / "test.npz", workdir=tmp_path)
    res.assert_status("torch.retrain", "info")
    met = res.metrics("torch.retrain")
    bp, fa = met["runs"]["backprop"]["sgd"], met["runs"]["feedback_alignment"]["sgd"]
    assert bp["accuracy"] >= 0.85
    assert fa["accuracy"] >= 0.5
    assert met["original"]["accuracy"] < 0.3
    for run in (bp, fa):
        check_run(run, xte, yte, original)
        assert len(run["loss"]) == len(run["train_accuracy"]) == 3
        assert run["loss"][-1] < run["loss"][0]
    assert fa["gap_to_backprop"] == pytest.approx(bp["accuracy"] - fa["accuracy"])
    assert met["max_gap_to_backprop"] == pytest.approx(fa["gap_to_backprop"])
    dtp = met["runs"]["difference_target_propagation"]["sgd"]
    assert dtp["status"] == "not applicable" and "convolution" in dtp["reason"]
    probs, _ = ort_features(str(tmp_path / "cnn.onnx"), xte)
    assert met["original"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == yte))


def test_mlp_rules_and_optimizers(tmp_path: Path) -> None:
    """Fine-tuning an MLP with DFA and DTP under SGD and SAM: every run evaluated from its ONNX file;
    DTP and DFA learn (well above chance)."""
    xtr, ytr, xte, yte = digits(n_train=800)
    np.savez(tmp_path / "train.npz", x=xtr, y=ytr)
    np.savez(tmp_path / "test.npz", x=xte, y=yte)
    original = export(mlp([64, 32, 16, 10]), torch.zeros(2, 1, 8, 8), tmp_path / "mlp.onnx")
    res = run_audit({"train_data": {"path": str(tmp_path / "train.npz")},
                     "checks": [{"use": "torch.retrain", "with": {
                         "epochs": 4, "rules": ["direct_feedback_alignment", "difference_target_propagation"],
                         "optimizers": ["sgd", "sam"], "save_dir": str(tmp_path / "out")}}]},
                    model=tmp_path / "mlp.onnx", data=tmp_path / "test.npz", workdir=tmp_path)
    res.assert_status("torch.retrain", "info")
    runs = res.metrics("torch.retrain")["runs"]
    assert set(runs) == {"backprop", "direct_feedback_alignment", "difference_target_propagation"}
    for rule, per in runs.items():
        assert set(per) == {"sgd", "sam"}
        for opt, run in per.items():
            assert run["status"] == "ok", (rule, opt, run)
            check_run(run, xte, yte, original)
            assert run["gap_to_backprop"] == pytest.approx(runs["backprop"][opt]["accuracy"] - run["accuracy"])
    assert runs["direct_feedback_alignment"]["sgd"]["accuracy"] > 0.3
    assert runs["difference_target_propagation"]["sgd"]["accuracy"] > 0.3
