"""Exports as people publish them (issue 15, core half): several data inputs, integer inputs, outputs without a
batch axis or shaped ``[N, C, 1, 1]``, one-hot / probability / string labels, quiet consoles, kept tracebacks.

Every number is checked against plain ONNX Runtime (or numpy) on the same inputs, never against the auditor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fake_plugin
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from builders import FLOAT, save_model
from onnx import TensorProto, helper

from auditor.data import DataConfig, load_dataset
from auditor.errors import SkipCheck
from auditor.model import ModelConfig, ModelHandle
from auditor.perturb import ValueKind, input_space, substitute_ids
from auditor.rowrandom import RowRandom
from auditor.testing import run_audit
from auditor.testing import save_model as save_proto

INT64 = TensorProto.INT64
VOCAB = 50


def noise_streams(seed: int, check_id: str, n: int, severity: int, repeat: int = 0) -> RowRandom:
    """The random streams a noise sweep draws from at one severity and repeat: one per sample, keyed by the spec's
    seed, the check's id and the sample's position (auditor.shards.Shard.random, auditor.rowrandom)."""
    return RowRandom.for_positions(seed, check_id, np.arange(n)).at(severity, repeat)


def ort_run(path: Path, feed: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """The model's output straight from ONNX Runtime, all rows in one call (no auditor code involved)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([output] if output else None, feed)[0])


# ------------------------------------------------------------------------------------------ two token inputs
def token_classifier(tmp_path: Path) -> Path:
    """A transformer-like classifier exported by torch: embedding of input_ids, masked mean over the sequence
    with attention_mask, a linear head. Both inputs int64 [batch, seq]."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, 8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            e = self.emb(input_ids)
            m = attention_mask.unsqueeze(-1).to(e.dtype)
            return self.fc((e * m).sum(1) / m.sum(1).clamp(min=1.0))

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "tokens.onnx"
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: fast, and what most published files used
        torch.onnx.export(net, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "logits": {0: "batch"}})
    save_proto(onnx.load(str(path)), path)
    return path


def token_data(tmp_path: Path, model: Path, n: int = 90) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    r = np.random.default_rng(3)
    ids = r.integers(0, VOCAB, (n, 6)).astype(np.int64)
    lengths = r.integers(2, 7, n)
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.int64)
    pred = ort_run(model, {"input_ids": ids, "attention_mask": mask}).argmax(1)
    y = np.where(r.random(n) < 0.2, (pred + 1) % 3, pred)
    data = tmp_path / "tokens.npz"
    np.savez(data, ids=ids, mask=mask, y=y)
    return data, ids, mask, y


def test_two_token_inputs_batched_together_and_perturbed_by_substitution(tmp_path: Path) -> None:
    model = token_classifier(tmp_path)
    data, ids, mask, y = token_data(tmp_path, model)
    seed = 5
    r = run_audit({"model": {"path": str(model), "input": "input_ids", "inputs": {"attention_mask": "mask"}},
                   "data": {"path": str(data), "x": "ids", "y": "y", "batch_size": 16}, "seed": seed,
                   "checks": [{"use": "performance.metrics"},
                              {"use": "robustness.noise", "with": {"kind": "substitute", "severity": [0.1, 0.5]}},
                              {"use": "robustness.noise", "name": "gauss"},
                              {"use": "robustness.square_attack", "with": {"max_queries": 5}},
                              {"use": "torch.pgd"}]},
                  workdir=tmp_path)
    assert r.exit_code == 0, r.error
    logits = ort_run(model, {"input_ids": ids, "attention_mask": mask})
    acc = float(np.mean(logits.argmax(1) == y))
    assert r.metrics("performance.metrics")["accuracy"] == pytest.approx(acc, abs=1e-12)

    # substitution: each id replaced with probability severity by another id of the vocabulary (read from the
    # embedding table), the mask passed through unchanged; the same draws made here independently
    clean = logits.argmax(1)
    for i, (point, sev) in enumerate(zip(r.metrics("robustness.noise")["curve"], [0.1, 0.5])):
        rng = noise_streams(seed, "robustness.noise", len(ids), i)
        hit = rng.random(ids.shape) < sev
        draw = rng.integers(0, VOCAB - 1, size=ids.shape)
        xs = np.where(hit, draw + (draw >= ids), ids)
        assert xs.min() >= 0 and xs.max() < VOCAB
        pred = ort_run(model, {"input_ids": xs, "attention_mask": mask}).argmax(1)
        assert point["flip_rate"] == pytest.approx(float(np.mean(pred != clean)), abs=1e-12)
        assert point["accuracy"] == pytest.approx(float(np.mean(pred == y)), abs=1e-12)
    # Gaussian noise and real-valued attacks never touch token ids: skipped with the reason
    r.assert_status("gauss", "skipped").assert_status("robustness.square_attack", "skipped")
    assert "integer ids" in (r.check("gauss").skip_reason or "")
    assert "vocabulary of 50" in (r.check("robustness.square_attack").skip_reason or "")
    r.assert_status("torch.pgd", "skipped")  # gradients never reach token ids
    assert "int64" in (r.check("torch.pgd").skip_reason or "")
    inputs = {i["name"]: i for i in r.doc["model"]["inputs"]}
    assert inputs["attention_mask"]["source"].startswith("data key 'mask'")
    assert r.doc["data"]["inputs"]["attention_mask"]["shape"] == [90, 6]


def test_masking_token_ids_and_the_vocabulary_of_an_input_behind_a_cast(tmp_path: Path) -> None:
    """ids (int32) -> Cast -> Gather(table of 11 rows): the vocabulary is read through the Cast; masking with
    mask_id replaces the chosen ids by that id, checked against ONNX Runtime on the same draws."""
    r = np.random.default_rng(0)
    w = {"E": r.normal(size=(11, 3)).astype(np.float32), "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=INT64),
             helper.make_node("Gather", ["E", "ids64"], ["e"]),
             helper.make_node("ReduceMean", ["e", "axes"], ["logits"], keepdims=0)]
    model = save_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 5])],
                       [helper.make_tensor_value_info("logits", FLOAT, ["N", 3])], w, tmp_path / "ids.onnx",
                       opset=18)
    m = ModelHandle(ModelConfig(path=model))
    space = input_space(m)
    assert (space.kind, space.vocab, space.bounds) == (ValueKind.IDS, 11, (0.0, 10.0))
    assert input_space(ModelHandle(ModelConfig(path=model, vocab_size=7))).vocab == 7  # declared wins
    ids = r.integers(0, 11, (70, 5)).astype(np.int32)
    y = ort_run(model, {"ids": ids}).argmax(1)
    np.savez(tmp_path / "ids.npz", x=ids, y=y)
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(tmp_path / "ids.npz")}, "seed": 3,
                     "checks": [{"use": "robustness.noise", "with": {"kind": "substitute", "severity": 0.4,
                                                                     "mask_id": 0}}]}, workdir=tmp_path)
    assert res.exit_code == 0, res.error
    rng = noise_streams(3, "robustness.noise", len(ids), 0)
    masked = np.where(rng.random(ids.shape) < 0.4, 0, ids).astype(np.int32)
    want = float(np.mean(ort_run(model, {"ids": masked}).argmax(1) != y))
    assert res.metrics("robustness.noise")["flip_rate"] == pytest.approx(want, abs=1e-12)


def test_substitute_ids_stays_in_the_vocabulary_and_changes_the_share_asked() -> None:
    ids = np.random.default_rng(0).integers(0, 7, (400, 50))
    out = substitute_ids(ids, 0.3, np.random.default_rng(1), 7)
    changed = out != ids
    assert out.min() >= 0 and out.max() <= 6
    assert abs(changed.mean() - 0.3) < 0.01  # every hit changes its id (drawn among the other 6)
    masked = substitute_ids(ids, 1.0, np.random.default_rng(1), 7, mask_id=3)
    assert np.all(masked == 3)


def test_auditor_init_writes_the_input_mapping_for_a_two_input_model(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditor.cli import main

    model = token_classifier(tmp_path)
    data, ids, mask, y = token_data(tmp_path, model)
    np.savez(data, input_ids=ids, attention_mask=mask, y=y)  # keys named like the inputs: init's mapping works
    out = tmp_path / "spec.yaml"
    res = CliRunner().invoke(main, ["init", str(model), "--data", str(data), "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(out.read_text())
    assert doc["model"]["input"] == "input_ids"
    assert doc["model"]["inputs"] == {"attention_mask": "attention_mask"}
    doc["report"] = {"dir": str(tmp_path / "reports"), "formats": ["json"]}
    r = run_audit(doc | {"checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    acc = float(np.mean(ort_run(model, {"input_ids": ids, "attention_mask": mask}).argmax(1) == y))
    assert r.metrics("performance.metrics")["accuracy"] == pytest.approx(acc, abs=1e-12)


def test_auditor_init_leaves_a_scalar_placeholder_to_the_user(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditor.cli import main

    r = np.random.default_rng(0)
    w = {"W": r.normal(size=(4, 3)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "keep_prob"], ["xk"]), helper.make_node("MatMul", ["xk", "W"], ["z"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("keep_prob", FLOAT, [])],
                       [helper.make_tensor_value_info("z", FLOAT, ["N", 3])], w, tmp_path / "tf.onnx")
    out = tmp_path / "spec.yaml"
    res = CliRunner().invoke(main, ["init", str(model), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "# feeds: {keep_prob: VALUE}" in text and "input: x" in text
    assert "feeds" not in yaml.safe_load(text)["model"]  # never a guessed value


def test_a_missing_per_sample_input_is_one_line_naming_the_key(tmp_path: Path) -> None:
    model = token_classifier(tmp_path)
    data, *_ = token_data(tmp_path, model)
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(data), "x": "ids"},
                   "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert r.exit_code == 4
    assert "model input 'attention_mask' takes per-sample data" in (r.error or "") and "model.inputs" in (r.error or "")


# ------------------------------------------------------------------------------------------ recurrent state
def recurrent_cell(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """logits = x W + h[0] U + b with a state h shaped [layers=1, N, 3]: the batch is its second axis."""
    r = np.random.default_rng(0)
    w = {"W": r.normal(size=(4, 3)).astype(np.float32), "U": r.normal(size=(3, 3)).astype(np.float32) * 2,
         "b": r.normal(size=3).astype(np.float32), "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Squeeze", ["h", "axes"], ["h0"]),
             helper.make_node("MatMul", ["h0", "U"], ["hu"]),
             helper.make_node("Add", ["xw", "hu"], ["s"]),
             helper.make_node("Add", ["s", "b"], ["logits"])]
    path = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4]),
                              helper.make_tensor_value_info("h", FLOAT, [1, "N", 3])],
                      [helper.make_tensor_value_info("logits", FLOAT, ["N", 3])], w, tmp_path / "rnn.onnx")
    return path, w


def test_a_state_whose_batch_axis_is_not_the_first_gets_its_rows_placed_there(tmp_path: Path) -> None:
    model, w = recurrent_cell(tmp_path)
    r_ = np.random.default_rng(1)
    n = 37
    x = r_.normal(size=(n, 4)).astype(np.float32)
    h = r_.normal(size=(n, 1, 3)).astype(np.float32)  # batch-first in the data, one [layers, hidden] per row
    logits = x @ w["W"] + h[:, 0] @ w["U"] + w["b"]
    y = logits.argmax(1)
    data = tmp_path / "rnn.npz"
    np.savez(data, x=x, h=h, y=y)
    m = ModelHandle(ModelConfig(path=model), batch_size=5)
    assert m.input.name == "x" and m.batch_axes == {"h": 1}
    ds = load_dataset(DataConfig(path=data, y="y"), inputs=m.input_keys, primary="x")
    got = m.predict(ds.x, inputs=ds.inputs)
    np.testing.assert_allclose(got, ort_run(model, {"x": x, "h": np.moveaxis(h, 0, 1)}), rtol=1e-5, atol=1e-5)
    with pytest.raises(SkipCheck, match=r"input\(s\) h take per-sample data"):
        m.predict(ds.x)  # a caller that forgets the other inputs is told, never fed something made up

    seed = 2
    sig = [0.5, 2.0]
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(data), "batch_size": 8}, "seed": seed,
                   "checks": [{"use": "robustness.noise", "with": {"sigma": sig}},
                              {"use": "robustness.square_attack", "with": {"max_queries": 30, "eps": 0.5}}],
                   "report": {"dir": str(tmp_path / "rep")}}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    # the state is passed through unchanged while x is perturbed: recompute the curve with numpy
    for i, (point, s) in enumerate(zip(r.metrics("robustness.noise")["curve"], sig)):
        rng = noise_streams(seed, "robustness.noise", n, i)
        xn = x.reshape(n, 1, 1, 4) + np.float32(s) * rng.standard_normal((n, 1, 1, 4), dtype=np.float32)
        pred = (xn.reshape(n, 4) @ w["W"] + h[:, 0] @ w["U"] + w["b"]).argmax(1)
        assert point["flip_rate"] == pytest.approx(float(np.mean(pred != y)), abs=1e-12)
    # adversarial examples are misclassified with their own rows' state, checked by plain ONNX Runtime
    sq = r.metrics("robustness.square_attack")
    assert sq["success_rate"] > 0
    saved = np.load(tmp_path / "rep" / "artifacts" / "robustness.square_attack" / "adversarial_examples.npz")
    rows = saved["rows"]
    adv = ort_run(model, {"x": saved["x_adv"], "h": np.moveaxis(h[rows], 0, 1)}).argmax(1)
    assert np.all(adv != y[rows]) and np.all(np.abs(saved["x_adv"] - x[rows]) <= 0.5 + 1e-6)
    assert len(rows) == round(sq["success_rate"] * sq["n_attacked"])


def test_csv_columns_feed_a_second_input(tmp_path: Path) -> None:
    model, w = recurrent_cell(tmp_path)
    r_ = np.random.default_rng(4)
    x, h = r_.normal(size=(20, 4)), r_.normal(size=(20, 3))
    rows = ["f0,f1,f2,f3,s0,s1,s2,label"] + [",".join(f"{v:.6f}" for v in (*a, *b)) + f",{i % 3}"
                                              for i, (a, b) in enumerate(zip(x, h))]
    csv = tmp_path / "rnn.csv"
    csv.write_text("\n".join(rows) + "\n")
    m = ModelHandle(ModelConfig(path=model, inputs={"h": ["s0", "s1", "s2"]}))
    ds = load_dataset(DataConfig(path=csv, y="label"), inputs=m.input_keys, primary="x")
    assert ds.feature_names == ["f0", "f1", "f2", "f3"]  # the state's columns are not features
    xs, hs = np.round(x, 6).astype(np.float32), np.round(h, 6).astype(np.float32)
    want = xs @ w["W"] + hs @ w["U"] + w["b"]
    np.testing.assert_allclose(m.predict(ds.x, inputs=ds.inputs), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ uint8 images
def uint8_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    r = np.random.default_rng(0)
    w = {"W": r.normal(size=(75, 3)).astype(np.float32), "scale": np.array(1 / 255, np.float32),
         "shape": np.array([-1, 75], np.int64)}
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "scale"], ["fs"]),
             helper.make_node("Reshape", ["fs", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    path = save_model(nodes, [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 3, 5, 5])],
                      [helper.make_tensor_value_info("logits", FLOAT, ["N", 3])], w, tmp_path / "u8.onnx")
    return path, w


def test_uint8_images_are_perturbed_in_float_and_rounded_and_clipped_back(tmp_path: Path) -> None:
    model, _w = uint8_model(tmp_path)
    n = 60
    img = np.random.default_rng(2).integers(0, 256, (n, 3, 5, 5)).astype(np.uint8)
    y = ort_run(model, {"img": img}).argmax(1)
    data = tmp_path / "u8.npz"
    np.savez(data, x=img, y=y)
    m = ModelHandle(ModelConfig(path=model))
    space = input_space(m, img)
    assert space.kind is ValueKind.QUANTIZED and space.bounds == (0.0, 255.0)
    seed, sig = 1, [20.0, 80.0]
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(data)}, "seed": seed,
                   "checks": [{"use": "robustness.noise", "with": {"sigma": sig}},
                              {"use": "robustness.square_attack", "with": {"eps": 40, "max_queries": 40}}],
                   "report": {"dir": str(tmp_path / "rep")}}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    for i, (point, s) in enumerate(zip(r.metrics("robustness.noise")["curve"], sig)):
        rng = noise_streams(seed, "robustness.noise", len(img), i)
        noisy = img.astype(np.float32) + np.float32(s) * rng.standard_normal(img.shape, dtype=np.float32)
        fed = np.rint(np.clip(noisy, 0, 255)).astype(np.uint8)
        pred = ort_run(model, {"img": fed}).argmax(1)
        assert point["flip_rate"] == pytest.approx(float(np.mean(pred != y)), abs=1e-12)
    saved = np.load(tmp_path / "rep" / "artifacts" / "robustness.square_attack" / "adversarial_examples.npz")
    assert saved["x_adv"].dtype == np.uint8
    diff = np.abs(saved["x_adv"].astype(int) - img[saved["rows"]].astype(int))
    assert diff.max() <= 40
    assert np.all(ort_run(model, {"img": saved["x_adv"]}).argmax(1) != y[saved["rows"]])


# ------------------------------------------------------------------------------------------ outputs
def test_a_detector_output_without_batch_axis_is_never_counted_as_samples(tmp_path: Path) -> None:
    """dets [5, 7] whatever the batch (a post-processed detector), beside a per-image score [N, 2]."""
    r = np.random.default_rng(0)
    w = {"W": r.normal(size=(3, 35)).astype(np.float32), "shape": np.array([5, 7], np.int64),
         "V": r.normal(size=(3, 2)).astype(np.float32), "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["pooled"], keepdims=1),
             helper.make_node("MatMul", ["pooled", "W"], ["d"]),
             helper.make_node("Reshape", ["d", "shape"], ["dets"]),
             helper.make_node("MatMul", ["x", "V"], ["scores"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("dets", FLOAT, [5, 7]),
                        helper.make_tensor_value_info("scores", FLOAT, ["N", 2])], w, tmp_path / "det.onnx",
                       opset=17)
    x = r.normal(size=(5, 3)).astype(np.float32)  # as many rows as dets has: only two batch sizes tell
    y = (x @ w["V"]).argmax(1)
    data = tmp_path / "det.npz"
    np.savez(data, x=x, y=y)
    res = run_audit({"model": {"path": str(model), "output": "dets"}, "data": {"path": str(data)},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    res.assert_status("performance.metrics", "skipped")
    assert "no batch axis" in (res.check("performance.metrics").skip_reason or "")
    res = run_audit({"model": {"path": str(model), "output": "scores"}, "data": {"path": str(data)},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert res.metrics("performance.metrics")["accuracy"] == 1.0
    outs = {o["name"]: o for o in res.doc["model"]["graph_outputs"]}
    assert outs["dets"] == {"name": "dets", "dtype": "float32", "shape": [5, 7], "scored": False}
    assert outs["scores"]["scored"] and outs["scores"]["batch_axis"] is True
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(data)},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    res.assert_status("performance.metrics", "skipped")  # both scored: dets still has no batch axis
    outs = {o["name"]: o for o in res.doc["model"]["graph_outputs"]}
    assert outs["dets"]["batch_axis"] is False and outs["dets"]["shape_one_sample"] == [5, 7]
    # declared: one image per call, each call's detections belong to that image
    m = ModelHandle(ModelConfig(path=model, output="dets", unbatched_outputs="per_call"), batch_size=4)
    got = m.predict(x)
    assert got.shape == (5, 5, 7)
    for i in range(5):
        np.testing.assert_allclose(got[i], ort_run(model, {"x": x[i:i + 1]}, "dets"), rtol=1e-6, atol=1e-6)


def test_a_classifier_output_n_c_1_1_is_read_as_n_c(tmp_path: Path) -> None:
    r = np.random.default_rng(0)
    w = {"K": r.normal(size=(4, 2, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"]),          # [N, 4, 1, 1]
             helper.make_node("Softmax", ["c"], ["probs"], axis=1)]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 2, 3, 3])],
                       [helper.make_tensor_value_info("probs", FLOAT, ["N", 4, 1, 1])], w, tmp_path / "c.onnx")
    x = r.normal(size=(80, 2, 3, 3)).astype(np.float32)
    p = ort_run(model, {"x": x})[:, :, 0, 0]
    y = np.where(r.random(80) < 0.3, (p.argmax(1) + 1) % 4, p.argmax(1))
    data = tmp_path / "c.npz"
    np.savez(data, x=x, y=y)
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(data)},
                     "checks": [{"use": "performance.metrics"},
                                {"use": "robustness.noise", "with": {"sigma": [0.3]}}]}, workdir=tmp_path)
    assert res.exit_code == 0, res.error
    assert res.metrics("performance.metrics")["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)))
    assert res.metrics("robustness.noise")["clean_accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)))


# ------------------------------------------------------------------------------------------ labels
def test_one_hot_and_probability_labels_are_read_as_classes(tmp_path: Path, mlp: Any) -> None:
    model, data, _w = mlp
    z = np.load(data)
    x, y = z["x"], z["y"]
    probs = ort_run(model, {"x": x})
    acc = float(np.mean(probs.argmax(1) == y))
    one_hot = np.eye(4)[y]
    soft = 0.6 * one_hot + 0.1  # rows sum to 1, argmax is the class
    checks = [{"use": "performance.metrics"}, {"use": "robustness.noise", "with": {"sigma": [0.01]}},
              {"use": "bias.group_metrics"}]
    for labels in (one_hot, soft):
        p = tmp_path / "lab.npz"
        np.savez(p, x=x, y=labels, g=np.arange(len(x)) % 2)
        r = run_audit({"model": {"path": str(model)}, "data": {"path": str(p), "groups": ["g"]},
                       "checks": checks}, workdir=tmp_path)
        assert all(c.status.value != "error" for c in r.report.checks), [c.error for c in r.report.checks]
        assert r.metrics("performance.metrics")["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert r.metrics("robustness.noise")["clean_accuracy"] == pytest.approx(acc, abs=1e-12)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x, y=one_hot * 2)
    r = run_audit({"model": {"path": str(model)}, "data": {"path": str(bad)},
                   "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert r.exit_code == 4 and "neither one-hot nor probabilities" in (r.error or "")


def test_string_labels_match_the_models_class_labels_or_data_classes(tmp_path: Path, mlp: Any) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    r = np.random.default_rng(0)
    x = r.normal(size=(200, 3)).astype(np.float32)
    names = np.array(["cat", "dog", "eel"])
    y = names[(x[:, 0] + 0.5 * r.normal(size=200) > 0).astype(int) + (x[:, 1] > 1)]
    clf = sklearn.LogisticRegression().fit(x, y)
    want = float(np.mean(clf.predict(x) == y))
    data = tmp_path / "s.npz"
    np.savez(data, x=x, y=y)
    for zipmap in (True, False):
        onx = skl2onnx.convert_sklearn(clf, initial_types=[("x", FloatTensorType([None, 3]))],
                                       options={id(clf): {"zipmap": zipmap}}, target_opset=17)
        path = save_proto(onx, tmp_path / f"lr_{zipmap}.onnx")
        res = run_audit({"model": {"path": str(path)}, "data": {"path": str(data)},
                         "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
        assert res.metrics("performance.metrics")["accuracy"] == pytest.approx(want, abs=1e-12)

    # a neural network knows no class names: string labels need data.classes (the model's column order)
    model, _, _w = mlp
    z = np.load(mlp[1])
    letters = np.array(list("abcd"))
    p = tmp_path / "nn.npz"
    np.savez(p, x=z["x"], y=letters[z["y"]])
    acc = float(np.mean(ort_run(model, {"x": z["x"]}).argmax(1) == z["y"]))
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(p), "classes": list("abcd")},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert res.metrics("performance.metrics")["accuracy"] == pytest.approx(acc, abs=1e-12)
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(p)},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    res.assert_status("performance.metrics", "skipped")
    assert "data.classes" in (res.check("performance.metrics").skip_reason or "")
    res = run_audit({"model": {"path": str(model)}, "data": {"path": str(p), "classes": list("abc")},
                     "checks": [{"use": "performance.metrics"}]}, workdir=tmp_path)
    assert res.exit_code == 4 and "'d'" in (res.error or "")


# ------------------------------------------------------------------------------------------ console, errors
def test_onnxruntime_log_lines_of_probes_never_reach_the_console(tmp_path: Path) -> None:
    """A fixed-batch model whose symbolic-batch probe fails inside ONNX Runtime (a Reshape to [1, 12])."""
    r = np.random.default_rng(0)
    w = {"shape": np.array([1, 12], np.int64), "W": r.normal(size=(12, 3)).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, 2, 2])],
                       [helper.make_tensor_value_info("logits", FLOAT, [1, 3])], w, tmp_path / "fixed.onnx")
    x = r.normal(size=(12, 3, 2, 2)).astype(np.float32)
    y = (x.reshape(12, 12) @ w["W"]).argmax(1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": "fixed.onnx"}, "data": {"path": "d.npz"},
                                    "checks": [{"use": "performance.metrics", "gate": {"accuracy": {"min": 1.0}}}],
                                    "report": {"dir": "rep", "formats": ["json"]}}))
    proc = subprocess.run([sys.executable, "-c", "from auditor.cli import main; main()", "run", str(spec)],
                          capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "onnxruntime:" not in proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert any("chunks of 1" in n for n in doc["model"]["notes"])


def test_a_check_that_raises_keeps_its_traceback_in_json_junit_and_on_request(tmp_path: Path, mlp: Any) -> None:
    from click.testing import CliRunner

    from auditor.cli import main

    model, data, _ = mlp
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(model)}, "data": {"path": str(data)},
                                    "checks": [{"use": "fake.crash"}],
                                    "report": {"dir": str(tmp_path / "rep"), "formats": ["json", "junit"]}}))
    assert fake_plugin.__name__ == "fake_plugin"
    res = CliRunner().invoke(main, ["run", str(spec), "-p", "fake_plugin", "--traceback"])
    assert res.exit_code == 1
    entry = json.loads((tmp_path / "rep" / "report.json").read_text())["checks"][0]
    assert entry["status"] == "error" and entry["traceback"].startswith("Traceback")
    assert "RuntimeError: boom" in entry["traceback"]
    from auditor.results import AuditReport

    back = AuditReport.from_json((tmp_path / "rep" / "report.json").read_text())
    assert back.checks[0].traceback == entry["traceback"]  # read back by diff and reporters too
    junit = (tmp_path / "rep" / "junit.xml").read_text()
    assert "Traceback (most recent call last)" in junit
    assert "--- traceback of fake.crash ---" in res.output and "RuntimeError: boom" in res.output
