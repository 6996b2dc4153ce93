"""Per-sample inputs and outputs whose batch axis the graph does not name (silero-vad's ``input [?, ?]``,
``state [2, ?, 128]``, ``sr`` scalar, ``stateN [?, ?, ?]``): the rows go where the shapes and the model say, a
placement nothing decides asks for ``model.inputs.NAME.batch_axis``, a model failing on the data is that check's
error naming what was fed.

Every number is checked against plain ONNX Runtime and numpy on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import FLOAT, save_model
from onnx import TensorProto, helper

from auditor.errors import SkipCheck
from auditor.model import ModelConfig, ModelHandle
from auditor.rowrandom import RowRandom
from auditor.testing import run_audit

INT64 = TensorProto.INT64
H = 3


def noise_streams(seed: int, check_id: str, n: int, severity: int, repeat: int = 0) -> RowRandom:
    """The random streams a noise sweep draws from at one severity and repeat: one per sample, keyed by the
    spec's seed, the check's id and the sample's position (auditor.shards.Shard.random)."""
    return RowRandom.for_positions(seed, check_id, np.arange(n)).at(severity, repeat)


def ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feed)]


def vad_like(tmp_path: Path, state_shape: list[int | str | None]) -> tuple[Path, dict[str, np.ndarray]]:
    """silero-vad's structure in small: ``output = sigmoid(a·mean(input) + state[0] @ u + c·sr)`` ``[?, 1]`` and
    ``stateN = tanh(state + bias)`` declared ``[?, ?, ?]``; ``state [2, batch, H]`` with the batch axis unnamed,
    ``sr`` an int64 scalar. ``bias [2, 1, H]`` makes a wrong placement of the state's rows fail to broadcast."""
    r = np.random.default_rng(0)
    w = {"a": np.array(3.0, np.float32), "u": r.normal(size=(H, 1)).astype(np.float32),
         "c": np.array(1e-4, np.float32), "zero": np.array(0, np.int64), "ax1": np.array([1], np.int64),
         "bias": r.normal(size=(2, 1, H)).astype(np.float32)}
    nodes = [helper.make_node("ReduceMean", ["input", "ax1"], ["m"], keepdims=1),
             helper.make_node("Mul", ["m", "a"], ["ma"]),
             helper.make_node("Add", ["state", "bias"], ["sb"]),
             helper.make_node("Gather", ["sb", "zero"], ["s0"], axis=0),
             helper.make_node("MatMul", ["s0", "u"], ["su"]),
             helper.make_node("Cast", ["sr"], ["srf"], to=FLOAT),
             helper.make_node("Mul", ["srf", "c"], ["src"]),
             helper.make_node("Add", ["ma", "su"], ["z0"]),
             helper.make_node("Add", ["z0", "src"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["output"]),
             helper.make_node("Tanh", ["sb"], ["stateN"])]
    path = save_model(nodes, [helper.make_tensor_value_info("input", FLOAT, [None, None]),
                              helper.make_tensor_value_info("state", FLOAT, state_shape),
                              helper.make_tensor_value_info("sr", INT64, [])],
                      [helper.make_tensor_value_info("output", FLOAT, [None, 1]),
                       helper.make_tensor_value_info("stateN", FLOAT, [None, None, None])],
                      w, tmp_path / "vad.onnx", opset=18)
    return path, w


def vad_numpy(w: dict[str, np.ndarray], x: np.ndarray, state_rows: np.ndarray, sr: int) -> np.ndarray:
    """The output of :func:`vad_like` in numpy, the state given batch-first ``[N, 2, H]``."""
    s = state_rows + w["bias"][:, 0][None]
    z = w["a"] * x.mean(axis=1, keepdims=True) + s[:, 0] @ w["u"] + w["c"] * np.float32(sr)
    return 1.0 / (1.0 + np.exp(-z))


def vad_data(tmp_path: Path, w: dict[str, np.ndarray], n: int = 24) -> tuple[Path, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    r = np.random.default_rng(3)
    x = r.normal(size=(n, 16)).astype(np.float32) * 0.3
    state = r.normal(size=(n, 2, H)).astype(np.float32)  # rows first in the data, as data files hold them
    y = (vad_numpy(w, x, state, 16000)[:, 0] > 0.5).astype(np.int64)
    path = tmp_path / "vad.npz"
    np.savez(path, x=x, state=state, y=y)
    return path, x, state, y


def test_unnamed_state_batch_axis_is_the_one_unfixed_axis_and_outputs_come_back_batch_first(tmp_path: Path) -> None:
    model, w = vad_like(tmp_path, [2, None, H])
    _, x, state, _y = vad_data(tmp_path, w)
    m = ModelHandle(ModelConfig(path=model, feeds={"sr": 16000}), batch_size=5)
    assert m.batch_axes == {"state": 1}
    got = m.run(x, inputs={"state": state})
    want_out, want_state = ort_outputs(model, {"input": x, "state": np.moveaxis(state, 0, 1),
                                               "sr": np.array(16000, np.int64)})
    np.testing.assert_allclose(got["output"], want_out, rtol=1e-6)
    np.testing.assert_allclose(got["output"], vad_numpy(w, x, state, 16000), rtol=1e-5)
    # stateN [2, batch, H]: its batch follows axis 1 and its per-sample shape is the state's: read batch-first
    assert m.output_axes == {"stateN": 1}
    np.testing.assert_allclose(got["stateN"], np.moveaxis(want_state, 1, 0), rtol=1e-6)


def test_an_ambiguous_placement_is_settled_by_the_data_shape_or_by_running_the_model(tmp_path: Path) -> None:
    # state [?, ?, H] and rows of [2, H]: axes 0 and 1 both fit the shape; only axis 1 broadcasts with bias
    model, w = vad_like(tmp_path, [None, None, H])
    _, x, state, _y = vad_data(tmp_path, w)
    m = ModelHandle(ModelConfig(path=model, feeds={"sr": 8000}), batch_size=7)
    got = m.predict(x, inputs={"state": state})
    assert m.batch_axes == {"state": 1}
    np.testing.assert_allclose(got, vad_numpy(w, x, state, 8000), rtol=1e-5)
    assert any("rows placed on axis 1" in n for n in m.notes)


def test_a_placement_nothing_decides_skips_asking_for_the_axis_and_a_declared_one_is_used(tmp_path: Path) -> None:
    # output = sum of everything: the model runs with the state's rows on any axis
    nodes = [helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
             helper.make_node("ReduceSum", ["h"], ["sh"], keepdims=0),
             helper.make_node("Add", ["sx", "sh"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "ax"], ["out"])]
    model = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, [None, 4]),
                               helper.make_tensor_value_info("h", FLOAT, [None, None])],
                       [helper.make_tensor_value_info("out", FLOAT, [1])], {"ax": np.array([0], np.int64)},
                       tmp_path / "sum.onnx")
    h = np.ones((6, 5), np.float32)
    x = np.ones((6, 4), np.float32)
    m = ModelHandle(ModelConfig(path=model))
    with pytest.raises(SkipCheck, match=r"model input 'h' \[\?, \?\]: its batch axis cannot be told .* axis 0 or 1"
                                        r".*inputs: \{h: \{key: h, batch_axis: AXIS\}\}"):
        m.run(x, inputs={"h": h})
    declared = ModelHandle(ModelConfig(path=model, inputs={"h": {"key": "h", "batch_axis": 1}}))
    assert declared.batch_axes == {"h": 1} and declared.input_keys == {"h": "h"}


def test_silero_like_audit_runs_noise_with_numbers_from_numpy(tmp_path: Path) -> None:
    model, w = vad_like(tmp_path, [2, None, H])
    data, x, state, y = vad_data(tmp_path, w)
    seed, sig = 3, [0.5, 2.0]
    r = run_audit({"model": {"path": str(model), "feeds": {"sr": 16000}}, "data": {"path": str(data), "y": "y"},
                   "seed": seed, "checks": [{"use": "robustness.noise", "with": {"sigma": sig}}],
                   "report": {"dir": str(tmp_path / "rep")}}, workdir=tmp_path)
    assert r.exit_code == 0, r.error
    assert r.check("robustness.noise")["status"] != "error"
    n = len(x)
    for i, (point, s) in enumerate(zip(r.metrics("robustness.noise")["curve"], sig)):
        rng = noise_streams(seed, "robustness.noise", n, i)
        xn = x.reshape(n, 1, 1, 16) + np.float32(s) * rng.standard_normal((n, 1, 1, 16), dtype=np.float32)
        pred = (vad_numpy(w, xn.reshape(n, 16), state, 16000)[:, 0] > 0.5).astype(np.int64)
        assert point["flip_rate"] == pytest.approx(float(np.mean(pred != y)), abs=1e-12)
    inputs = {i["name"]: i for i in r.report["model"]["inputs"]}
    assert inputs["state"]["batch_axis"] == 1


def test_a_model_failing_on_the_data_is_that_checks_error_naming_what_was_fed(tmp_path: Path) -> None:
    model, w = vad_like(tmp_path, [2, None, H])
    data, *_ = vad_data(tmp_path, w)
    # a wrong declared axis: the state's rows on axis 0 of [2, ?, H]
    r = run_audit({"model": {"path": str(model), "feeds": {"sr": 16000},
                             "inputs": {"state": {"key": "state", "batch_axis": 0}}},
                   "data": {"path": str(data), "y": "y"}, "seed": 0,
                   "checks": [{"use": "robustness.noise", "with": {"sigma": [0.5]}}],
                   "report": {"dir": str(tmp_path / "rep")}}, workdir=tmp_path)
    assert r.exit_code == 1
    c = r.check("robustness.noise")
    assert c["status"] == "error"
    assert "the model fails on the data" in c["error"]
    assert "state [24, 2, 3] (declared [2, ?, 3])" in c["error"] and "batch_axis: AXIS" in c["error"]
