"""The torch backend on models with several data inputs (#15): the companions (an attention mask, a state) are
fed as ONNX Runtime gets them, only the primary input is perturbed or differentiated, and gradient methods on
integer inputs skip with the reason.

Numbers are checked against plain ONNX Runtime and numpy (a linear model's gradients and FGSM steps are known
in closed form)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_exports import ort_run, recurrent_cell, token_classifier, token_data

from auditor.model import ModelConfig, ModelHandle
from auditor.testing import run_audit

pytest.importorskip("torch")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_parity_on_a_torch_exported_two_input_transformer_and_gradients_skip_on_ids(tmp_path: Path) -> None:
    from auditor_torch.backend import TorchBackend

    model = token_classifier(tmp_path)
    data, ids, mask, _y = token_data(tmp_path, model, n=40)
    r = run_audit({"model": {"path": str(model), "input": "input_ids", "inputs": {"attention_mask": "mask"}},
                   "data": {"path": str(data), "x": "ids", "y": "y", "batch_size": 16}, "seed": 0,
                   "checks": [{"use": "torch.parity"}, {"use": "torch.pgd"}, {"use": "torch.input_gradients"}]},
                  workdir=tmp_path)
    assert r.exit_code == 0, r.error
    par = r.metrics("torch.parity")
    assert par["n"] == 40 and par["violations"] == 0
    # the interpreter fed the mask as ONNX Runtime is fed it: its difference to plain ONNX Runtime, recomputed
    want = ort_run(model, {"input_ids": ids, "attention_mask": mask})
    h = ModelHandle(ModelConfig(path=model, input="input_ids", inputs={"attention_mask": "mask"}), batch_size=16)
    got = TorchBackend(h).forward(ids, inputs={"attention_mask": mask})
    assert np.max(np.abs(got - want)) < 1e-5
    assert par["max_abs_diff"] == pytest.approx(float(np.max(np.abs(got.astype(np.float64) - want))), abs=1e-6)
    # a mask of zeros changes the answer: the mask really is read (not a constant made up by the backend)
    zero = TorchBackend(h).forward(ids, inputs={"attention_mask": np.zeros_like(mask)})
    assert np.max(np.abs(zero - want)) > 1e-3
    for c in ("torch.pgd", "torch.input_gradients"):
        r.assert_status(c, "skipped")
        assert "int64" in (r.check(c).skip_reason or "") and "gradient" in (r.check(c).skip_reason or "")


def test_gradient_checks_on_a_two_float_input_model_against_closed_forms(tmp_path: Path) -> None:
    from auditor_torch.backend import TorchBackend

    model, w = recurrent_cell(tmp_path)  # logits = x W + h[0] U + b, h shaped [1, N, 3]
    r_ = np.random.default_rng(7)
    n = 41
    x = r_.normal(size=(n, 4)).astype(np.float32)
    h = r_.normal(size=(n, 1, 3)).astype(np.float32)  # rows first in the data
    logits = x @ w["W"] + h[:, 0] @ w["U"] + w["b"]
    y = logits.argmax(1)
    y[::5] = (y[::5] + 1) % 3  # some wrong labels, so clean accuracy is not 1
    data = tmp_path / "cell.npz"
    np.savez(data, x=x, h=h, y=y)

    m = ModelHandle(ModelConfig(path=model), batch_size=8)
    be = TorchBackend(m)
    # d logit_y / dx = W[:, y] whatever the state; the state passes through (its rows on axis 1)
    g = be.input_gradients(x, y, of="logit", inputs={"h": h})
    np.testing.assert_allclose(g, w["W"][:, y].T, rtol=1e-6)
    np.testing.assert_allclose(be.forward(x, inputs={"h": h}), logits, rtol=1e-5, atol=1e-5)

    eps = 0.3
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(data), "y": "y", "batch_size": 8},
                   "seed": 0, "checks": [{"use": "torch.parity"},
                                         {"use": "torch.pgd", "with": {"attack": "fgsm", "eps": eps}},
                                         {"use": "torch.input_gradients", "with": {"fractions": [0.25]}},
                                         {"use": "torch.blind_spots", "with": {"limit": 6, "steps": 5}}]},
                  workdir=tmp_path)
    assert r.exit_code == 0, r.error
    par = r.metrics("torch.parity")
    assert par["violations"] == 0 and par["max_abs_diff"] == pytest.approx(
        float(np.max(np.abs(be.forward(x, inputs={"h": h}).astype(np.float64)
                            - ort_run(model, {"x": x, "h": np.moveaxis(h, 0, 1)})))), abs=1e-7)
    # FGSM in closed form: d CE / dx = W (softmax(z) - onehot(y)); one signed step of eps, state unchanged
    p = softmax(logits.astype(np.float64))
    grad = (p - np.eye(3)[y]) @ w["W"].T.astype(np.float64)
    adv = x + np.float32(eps) * np.sign(grad).astype(np.float32)
    adv_pred = ort_run(model, {"x": adv, "h": np.moveaxis(h, 0, 1)}).argmax(1)
    clean_ok = logits.argmax(1) == y
    success = clean_ok & (adv_pred != y)
    pgd = r.metrics("torch.pgd")
    assert pgd["clean_accuracy"] == pytest.approx(float(clean_ok.mean()), abs=1e-12)
    assert pgd["success_rate"] == pytest.approx(float(success.sum() / clean_ok.sum()), abs=1e-12)
    assert pgd["robust_accuracy"] == pytest.approx(float(np.mean(clean_ok & (adv_pred == y))), abs=1e-12)
    assert pgd["torch_ort_disagreement"] == 0.0
    ig = r.metrics("torch.input_gradients")
    assert ig["clean_accuracy"] == pytest.approx(float(clean_ok.mean()), abs=1e-12)
    # top-25 % (one of four coordinates) removed: the coordinate with the largest |W[j, y]|, filled with the mean
    top = np.abs(w["W"][:, y].T).argmax(1)
    xm = x.copy()
    xm[np.arange(n), top] = x.mean(0)[top]
    acc_top = float(np.mean(ort_run(model, {"x": xm, "h": np.moveaxis(h, 0, 1)}).argmax(1) == y))
    assert ig["acc_top_removed"] == [pytest.approx(acc_top, abs=1e-12)]
    bs = r.check("torch.blind_spots")
    assert bs.status != "skipped" and bs.metrics["n_pairs"] == 6


def test_retraining_a_two_input_model_feeds_the_state_and_takes_the_closed_form_step(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model, w = recurrent_cell(tmp_path)  # logits = x W + h[0] U + b
    r_ = np.random.default_rng(11)
    n = 24
    x = r_.normal(size=(n, 4)).astype(np.float32)
    h = r_.normal(size=(n, 1, 3)).astype(np.float32)
    y = r_.integers(0, 3, n)
    data = tmp_path / "cell.npz"
    np.savez(data, x=x, h=h, y=y)
    lr = 0.1
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(data), "y": "y"},
                   "train_data": {"path": str(data), "y": "y"}, "seed": 0,
                   "checks": [{"use": "torch.retrain", "with": {"rules": ["backprop"], "epochs": 1, "batch_size": n,
                                                                "lr": lr, "momentum": 0.0}}],
                   "report": {"dir": str(tmp_path / "rep")}}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    m = r.metrics("torch.retrain")
    logits = (x @ w["W"] + h[:, 0] @ w["U"] + w["b"]).astype(np.float64)
    assert m["original"]["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y)), abs=1e-12)
    run = m["runs"]["backprop"]["sgd"]
    # one full-batch SGD step on the mean cross-entropy: dCE/dW = x^T (softmax - onehot) / n, likewise U with h[0]
    g = (softmax(logits) - np.eye(3)[y]) / n
    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(run["model_path"]).graph.initializer}
    np.testing.assert_allclose(saved["W"], w["W"] - lr * x.T.astype(np.float64) @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved["U"], w["U"] - lr * h[:, 0].T.astype(np.float64) @ g, rtol=1e-5, atol=1e-6)
    # the retrained model's accuracy is ONNX Runtime's on the written file, its state fed on axis 1
    new = ort_run(Path(run["model_path"]), {"x": x, "h": np.moveaxis(h, 0, 1)})
    assert run["accuracy"] == pytest.approx(float(np.mean(new.argmax(1) == y)), abs=1e-12)
