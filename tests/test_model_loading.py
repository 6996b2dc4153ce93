"""Real exports are messy: each case here builds such a model and checks the auditor runs it right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import FLOAT, blobs, mlp_numpy, mlp_weights, save_model, write_mlp
from onnx import TensorProto, helper

from auditor.data import Dataset, fit_to_model
from auditor.errors import DataError, ModelLoadError
from auditor.model import ModelConfig, ModelHandle


def handle(path: Path, **kw: object) -> ModelHandle:
    return ModelHandle(ModelConfig(path=path, device="cpu", **kw))  # type: ignore[arg-type]


def test_dynamic_batch_matches_numpy(tmp_path: Path) -> None:
    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w))
    x, _ = blobs(1000, w=w)
    out = m.predict(x, batch_size=128)
    np.testing.assert_allclose(out, mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    assert m.info()["batching"] == "dynamic"


def test_fixed_batch_one_is_made_symbolic_and_verified(tmp_path: Path) -> None:
    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w, batch=1))
    x, _ = blobs(300, w=w)
    out = m.predict(x)
    np.testing.assert_allclose(out, mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    assert m.info()["batching"] == "symbolic"
    assert any("made symbolic" in n for n in m.notes)


def test_fixed_batch_with_hardcoded_reshape_falls_back_but_stays_right(tmp_path: Path) -> None:
    """Reshape to a constant [1, -1] breaks when the batch grows: the auditor must notice and fall back."""
    w = mlp_weights()
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xf"]),
        helper.make_node("Gemm", ["xf", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = {**w, "shape": np.array([1, -1], dtype=np.int64)}
    path = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 2, 4])],
                      [helper.make_tensor_value_info("probs", FLOAT, [1, 4])], inits, tmp_path / "m.onnx")
    m = handle(path)
    x, _ = blobs(50, w=w)
    out = m.predict(x.reshape(50, 2, 4))
    np.testing.assert_allclose(out, mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    assert m.info()["batching"] == "fixed"


def test_fixed_batch_of_four_with_remainder(tmp_path: Path) -> None:
    w = mlp_weights()
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xf"]),
        helper.make_node("Gemm", ["xf", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "b2"], ["probs"]),
    ]
    inits = {**w, "shape": np.array([4, 8], dtype=np.int64)}
    path = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, [4, 8])],
                      [helper.make_tensor_value_info("probs", FLOAT, [4, 4])], inits, tmp_path / "m.onnx")
    x, _ = blobs(23, w=w)  # not a multiple of 4: the last chunk is padded and trimmed
    out = handle(path).predict(x)
    np.testing.assert_allclose(out, mlp_numpy(x, w, softmax=False), rtol=1e-4, atol=1e-4)


def _conv_model(path: Path, nhwc: bool, batch: int | str = "N") -> tuple[Path, np.ndarray]:
    """A Keras-style NHWC model transposes to NCHW inside; a PyTorch-style one takes NCHW directly."""
    r = np.random.default_rng(0)
    k = r.normal(size=(2, 3, 3, 3)).astype(np.float32)
    nodes = []
    src = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [
        helper.make_node("Conv", [src, "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probs"], axis=1),
    ]
    shape = [batch, 8, 8, 3] if nhwc else [batch, 3, 8, 8]
    save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, shape)],
               [helper.make_tensor_value_info("probs", FLOAT, [batch, 2])], {"K": k}, path)
    return path, k


def _conv_reference(x_nchw: np.ndarray, k: np.ndarray) -> np.ndarray:
    n, _, h, w = x_nchw.shape
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, k.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + w], k[:, :, i, j])
    g = out.mean(axis=(2, 3))
    e = np.exp(g - g.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("nhwc", [True, False])
def test_nhwc_and_nchw_models(tmp_path: Path, nhwc: bool) -> None:
    path, k = _conv_model(tmp_path / "m.onnx", nhwc)
    m = handle(path)
    assert m.layout == ("NHWC" if nhwc else "NCHW")
    x = np.random.default_rng(1).normal(size=(20, 3, 8, 8)).astype(np.float32)
    feed = np.transpose(x, (0, 2, 3, 1)) if nhwc else x
    np.testing.assert_allclose(m.predict(feed), _conv_reference(x, k), rtol=1e-4, atol=1e-5)


def test_data_in_the_other_layout_is_transposed_with_a_note(tmp_path: Path) -> None:
    path, k = _conv_model(tmp_path / "m.onnx", nhwc=True)
    m = handle(path)
    x = np.random.default_rng(1).normal(size=(10, 3, 8, 8)).astype(np.float32)  # NCHW data, NHWC model
    ds = fit_to_model(Dataset(x=x, y=None, groups={}, columns={}, source="d.npz"), m.input.shape, "x", "m.onnx")
    assert "NCHW -> NHWC" in ds.notes[-1]
    np.testing.assert_allclose(m.predict(ds.x), _conv_reference(x, k), rtol=1e-4, atol=1e-5)


def test_data_of_wrong_shape_is_one_clear_error(tmp_path: Path) -> None:
    path, _ = _conv_model(tmp_path / "m.onnx", nhwc=False)
    m = handle(path)
    ds = Dataset(x=np.zeros((4, 5, 5), np.float32), y=None, groups={}, columns={}, source="d.npz")
    with pytest.raises(DataError, match=r"d.npz: x has per-sample shape \[5, 5\] but model input 'x'"):
        fit_to_model(ds, m.input.shape, "x", "m.onnx")


def test_old_ir_initializers_listed_as_inputs_are_weights(tmp_path: Path) -> None:
    w = mlp_weights()
    path = write_mlp(tmp_path / "old.onnx", w, opset=8, ir=3, list_inits_as_inputs=True)
    m = handle(path)
    assert m.input.name == "x"
    x, _ = blobs(40, w=w)
    np.testing.assert_allclose(m.predict(x), mlp_numpy(x, w), rtol=1e-4, atol=1e-5)


def _tf_style_graph(path: Path, w: dict[str, np.ndarray]) -> Path:
    """x and keep_prob and a label placeholder; the declared output is an accuracy scalar needing labels."""
    nodes = [
        helper.make_node("Mul", ["x", "keep_prob"], ["xk"]),
        helper.make_node("Gemm", ["xk", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax"], axis=1),
        helper.make_node("ArgMax", ["softmax"], ["pred"], axis=1, keepdims=0),
        helper.make_node("Equal", ["pred", "labels"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["eqf"], ["accuracy"], keepdims=0),
    ]
    ins = [helper.make_tensor_value_info("x", FLOAT, ["N", 8]),
           helper.make_tensor_value_info("keep_prob", FLOAT, []),
           helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])]
    return save_model(nodes, ins, [helper.make_tensor_value_info("accuracy", FLOAT, [])], w, path, opset=17)


def test_intermediate_output_cuts_the_graph_and_unused_inputs_vanish(tmp_path: Path) -> None:
    w = mlp_weights()
    path = _tf_style_graph(tmp_path / "tf.onnx", w)
    unfed = handle(path, output="softmax")  # keep_prob is still needed and has no value: said before it runs
    with pytest.raises(ModelLoadError, match="keep_prob"):
        unfed.check_loads()  # (a weights-only audit, which never feeds the model, needs no value)
    with pytest.raises(ModelLoadError, match="keep_prob"):
        unfed.predict(blobs(3, w=w)[0])
    m = handle(path, output="softmax", feeds={"keep_prob": 1.0})
    x, _ = blobs(30, w=w)
    np.testing.assert_allclose(m.predict(x), mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    assert m.input.name == "x"
    assert "labels" not in {i.name for i in m.base.graph.input}


def test_unknown_output_tensor_names_the_graph_outputs(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.onnx", mlp_weights())
    with pytest.raises(ModelLoadError, match=r"model.output: tensor 'nope' is not in .* \(graph outputs: probs\)"):
        handle(path, output="nope")


def test_every_layer_activations_added_once(tmp_path: Path) -> None:
    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w))
    layers = m.layer_names("every")
    assert layers == ["h", "hr", "logits", "probs"]
    x, _ = blobs(64, w=w)
    out = m.run(x, ["hr", "logits"], batch_size=10)
    np.testing.assert_allclose(out["hr"], np.maximum(x @ w["W1"] + w["b1"], 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["logits"], mlp_numpy(x, w, softmax=False), rtol=1e-4, atol=1e-4)
    assert m.penultimate() == "hr"
    m.run(x, ["hr", "logits"])
    assert len(m._sessions) == 1  # the session with these outputs is cached, not rebuilt


def test_ir_version_too_new_is_explained_in_one_line(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.onnx", mlp_weights(), ir=14)
    with pytest.raises(ModelLoadError) as e:
        handle(path).check_loads()
    msg = str(e.value)
    assert "IR version 14" in msg and "ir_version" in msg and "\n" not in msg


def test_unknown_opset_is_explained(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.onnx", mlp_weights(), opset=99)
    with pytest.raises(ModelLoadError, match="opset") as e:
        handle(path).check_loads()
    assert "\n" not in str(e.value)


def test_custom_domain_is_explained(tmp_path: Path) -> None:
    nodes = [helper.make_node("FancyOp", ["x"], ["y"], domain="com.acme")]
    path = save_model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 2])],
                      [helper.make_tensor_value_info("y", FLOAT, ["N", 2])], {}, tmp_path / "m.onnx",
                      extra_opsets=[("com.acme", 1)])
    with pytest.raises(ModelLoadError, match=r"custom domain\(s\) com.acme \(FancyOp\)"):
        handle(path).check_loads()


def test_missing_and_garbage_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        handle(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        handle(bad).check_loads()


def _external(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    w = mlp_weights(n_in=64, n_hidden=256)
    path = write_mlp(tmp_path / "big.onnx", w)
    m = onnx.load(str(path))
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    return path, w


def test_external_data_weights_are_memory_mapped_and_model_runs(tmp_path: Path) -> None:
    path, w = _external(tmp_path)
    m = handle(path)
    refs = {r.name: r for r in m.weights()}
    assert refs["W1"].external
    arr = m.read_weight(refs["W1"])
    assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, w["W1"])
    x = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    # the cut graph (an intermediate output) is built in memory and must still find its weight file
    np.testing.assert_allclose(m.run(x, ["hr"])["hr"], np.maximum(x @ w["W1"] + w["b1"], 0), rtol=1e-4, atol=1e-4)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    path, _ = _external(tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        handle(path)


def test_device_auto_is_quiet_and_cuda_forced_fails_clearly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from auditor.device import probe_cuda

    path = write_mlp(tmp_path / "m.onnx", mlp_weights())
    probe_cuda.cache_clear()
    m = ModelHandle(ModelConfig(path=path, device="auto"))
    m.check_loads()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    if m.provider == "CPUExecutionProvider":
        assert m.device_note.startswith("CPU (auto")
        with pytest.raises(ModelLoadError, match=r"model\.device: device 'cuda' requested"):
            ModelHandle(ModelConfig(path=path, device="cuda"))
    else:  # on a machine with a working GPU
        assert m.device_note == "CUDA (auto)"


def test_int_input_and_data_casting(tmp_path: Path) -> None:
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Softmax", ["xf"], ["p"], axis=1)]
    path = save_model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3])],
                      [helper.make_tensor_value_info("p", FLOAT, ["N", 3])], {}, tmp_path / "m.onnx")
    m = handle(path)
    out = m.predict(np.array([[0.0, 1.0, 2.0]]))
    assert out.shape == (1, 3)
    with pytest.raises(DataError, match="wants integers"):
        m.predict(np.array([[0.5, 1.0, 2.0]]))


def test_intermediate_outputs_share_one_extended_session(tmp_path: Path) -> None:
    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w))
    x, _ = blobs(16, w=w)
    m.run(x, ["h"])
    m.run(x, ["logits"])
    h = m.run(x, ["h"])["h"]  # served by the union session, not a third one
    extended = [k for k in m._sessions if k]
    assert extended == [("h", "logits")]
    np.testing.assert_allclose(h, x @ w["W1"] + w["b1"], rtol=1e-4, atol=1e-4)


def test_missing_singleton_channel_is_added(tmp_path: Path) -> None:
    path, k = _conv_model(tmp_path / "m.onnx", nhwc=False)
    m = handle(path)
    x = np.random.default_rng(0).normal(size=(5, 3 * 64)).astype(np.float32)
    ds = Dataset(x=x.reshape(5, 3, 8, 8)[:, :1].reshape(5, 8, 8), y=None, groups={}, columns={}, source="d.npz")
    with pytest.raises(DataError):  # 8x8 single-channel data cannot feed a 3-channel input
        fit_to_model(ds, m.input.shape, "x", "m.onnx")
    ds3 = Dataset(x=x.reshape(5, 1, 3, 8, 8), y=None, groups={}, columns={}, source="d.npz")
    fitted = fit_to_model(ds3, m.input.shape, "x", "m.onnx")
    assert fitted.x.shape == (5, 3, 8, 8) and "singleton" in fitted.notes[-1]
    np.testing.assert_allclose(m.predict(fitted.x), _conv_reference(x.reshape(5, 3, 8, 8), k), rtol=1e-4, atol=1e-5)


def test_io_binding_path_gives_the_same_outputs(tmp_path: Path) -> None:
    """The IO-binding path used on CUDA, exercised on the CPU provider: same numbers as plain run()."""
    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w))
    x, _ = blobs(100, w=w)
    plain = m.run(x, ["probs", "hr"])
    m.use_io_binding = True
    bound = m.run(x, ["probs", "hr"], batch_size=33)
    for k in plain:
        np.testing.assert_allclose(bound[k], plain[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bound["probs"], mlp_numpy(x, w), rtol=1e-4, atol=1e-5)


def test_logits_tensor_and_activations_share_the_prediction_pass(tmp_path: Path) -> None:
    import numpy as np

    from auditor.context import AuditContext
    from auditor.data import Dataset

    w = mlp_weights()
    m = handle(write_mlp(tmp_path / "m.onnx", w))
    assert m.logits_tensor() == "logits"
    assert handle(write_mlp(tmp_path / "l.onnx", w, softmax=False)).logits_tensor() is None
    x, y = blobs(40, w=w)
    ds = Dataset(x=x, y=y, groups={}, columns={}, source="d.npz")
    ctx = AuditContext(check_id="c", params={}, model=m, data=ds, seed=0, rng=np.random.default_rng(0))
    acts = ctx.activations(["logits"])
    assert (id(m), id(ds)) in ctx.cache.predictions  # filled by the same pass
    np.testing.assert_allclose(ctx.predictions().probs, mlp_numpy(x, w), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(acts["logits"], mlp_numpy(x, w, softmax=False), rtol=1e-4, atol=1e-4)
