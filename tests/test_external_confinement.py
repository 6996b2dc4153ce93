"""External data is confined to the model's folder wherever a tensor hides: initializers, sparse initializers,
``Constant.sparse_value``, tensor attributes and local function bodies, also in weights-only audits; offsets and
lengths must be integers; errors name the real cause."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from builders import mlp_weights, write_mlp
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from auditor import graph as G
from auditor.cli import main
from auditor.testing import save_model


def externalise(t: TensorProto, location: str, offset: str | None = None, length: str | None = None) -> None:
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.ClearField("int64_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in [("location", location), ("offset", offset), ("length", length)]:
        if v is not None:
            t.external_data.add(key=k, value=v)


def base_model(tmp: Path) -> onnx.ModelProto:
    (tmp / "m").mkdir(exist_ok=True)
    path = write_mlp(tmp / "m" / "mlp.onnx", mlp_weights())
    return onnx.load(str(path))


def sparse_init(m: onnx.ModelProto, location: str) -> None:
    values = numpy_helper.from_array(np.ones(3, np.float32), "sp_values")
    externalise(values, location)
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "sp_idx")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 4]))


def sparse_constant(m: onnx.ModelProto, location: str) -> None:
    values = numpy_helper.from_array(np.ones(2, np.float32), "cv")
    externalise(values, location)
    indices = numpy_helper.from_array(np.array([1, 2], np.int64), "ci")
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c_sparse"],
                                            sparse_value=helper.make_sparse_tensor(values, indices, [4])))


def function_body(m: onnx.ModelProto, location: str) -> None:
    t = numpy_helper.from_array(np.ones(4, np.float32), "fv")
    externalise(t, location)
    body = [helper.make_node("Constant", [], ["k"], value=t), helper.make_node("Add", ["a", "k"], ["b"])]
    m.functions.append(helper.make_function("local", "AddK", ["a"], ["b"], body,
                                            [helper.make_opsetid("", 17)]))
    m.opset_import.append(helper.make_opsetid("local", 1))


def initializer(m: onnx.ModelProto, location: str) -> None:
    w1 = next(t for t in m.graph.initializer if t.name == "W1")
    externalise(w1, location)


HIDING: dict[str, Callable[[onnx.ModelProto, str], None]] = {
    "initializer": initializer, "sparse initializer": sparse_init, "Constant.sparse_value": sparse_constant,
    "function body": function_body,
}


def weights_only_run(tmp: Path, m: onnx.ModelProto) -> tuple[int, str]:
    path = tmp / "m" / "mlp.onnx"
    save_model(m, path)
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(path)},
                                    "checks": [{"use": "sparsity.profile"}], "report": {"dir": str(tmp / "r")}}))
    r = CliRunner().invoke(main, ["run", str(spec)])
    return r.exit_code, r.stderr


@pytest.mark.parametrize("where", list(HIDING))
def test_external_data_outside_the_folder_is_refused_wherever_it_hides(tmp_path: Path, where: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    m = base_model(tmp_path)
    HIDING[where](m, "../secret.bin")
    code, err = weights_only_run(tmp_path, m)
    assert code == 4, err
    assert "points outside the model's folder ('../secret.bin'): refused" in err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("offset,length,needle", [
    ("abc", None, "offset 'abc' is not a non-negative integer"),
    ("-4", None, "offset '-4' is not a non-negative integer"),
    ("0", "1e3", "length '1e3' is not a non-negative integer"),
    ("0", "4", "length 4 is shorter than its shape and type need (512 bytes)"),
    ("4096", None, "bytes 4096..4608 of 'w.bin' are needed, but the file has 512"),
])
def test_external_offset_and_length_must_be_integers_that_fit(tmp_path: Path, offset: str, length: str | None,
                                                              needle: str) -> None:
    m = base_model(tmp_path)
    w1 = next(t for t in m.graph.initializer if t.name == "W1")
    (tmp_path / "m" / "w.bin").write_bytes(numpy_helper.to_array(w1).tobytes())  # 8 x 16 float32 = 512 bytes
    externalise(w1, "w.bin", offset, length)
    code, err = weights_only_run(tmp_path, m)
    assert code == 4 and f"external data of tensor 'W1': {needle}" in err, err
    assert err.count("\n") == 1


def test_a_missing_external_file_is_named(tmp_path: Path) -> None:
    m = base_model(tmp_path)
    externalise(next(t for t in m.graph.initializer if t.name == "W1"), "gone.bin")
    code, err = weights_only_run(tmp_path, m)
    assert code == 4 and "external data of tensor 'W1': file 'gone.bin' not found in the model's folder" in err


def test_external_tensors_are_read_from_the_model_folder_never_the_current_one(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # onnx's own reader resolves an external location against the current folder; the auditor's does not.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "v.bin").write_bytes(np.array([1, 2, 3], np.float32).tobytes())
    (tmp_path / "v.bin").write_bytes(np.array([7, 7, 7], np.float32).tobytes())
    monkeypatch.chdir(tmp_path)
    t = numpy_helper.from_array(np.zeros(3, np.float32), "v")
    externalise(t, "v.bin")
    np.testing.assert_array_equal(G.tensor_array(t, tmp_path / "m"), [1, 2, 3])
    with pytest.raises(G.ExternalDataError, match="only inline values are read"):
        G.tensor_array(t)
    inside = numpy_helper.from_array(np.ones(2, np.float32), "cv")
    externalise(inside, "v.bin")
    node = helper.make_node("Constant", [], ["c"], sparse_value=helper.make_sparse_tensor(
        inside, numpy_helper.from_array(np.array([0, 2], np.int64), "ci"), [3]))
    assert G.constant_tensor(node) is None  # no folder given: not read at all
    dense = G.constant_tensor(node, tmp_path / "m")
    assert dense is not None
    np.testing.assert_array_equal(numpy_helper.to_array(dense), [1, 0, 2])
