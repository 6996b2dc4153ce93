"""Values a careless or hostile user gives: each is one line with exit 2 (spec) or 4 (model/data), no
traceback and no report; labels are never truncated, missing labels are refused alike in every format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from builders import save_model
from click.testing import CliRunner
from onnx import TensorProto, helper

from auditor.cli import main
from auditor.data import check_class_labels
from auditor.errors import DataError
from auditor.outputs import encode_labels

Doc = dict[str, Any]


def two_input_model(tmp: Path) -> str:
    # x [N, 8] * k [1]: k is a constant input given by model.feeds
    return str(save_model([helper.make_node("Mul", ["x", "k"], ["o"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                           helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 8])], {}, tmp / "two.onnx"))


def string_input_model(tmp: Path) -> str:
    return str(save_model([helper.make_node("Identity", ["s"], ["o"])],
                          [helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 8])],
                          [helper.make_tensor_value_info("o", TensorProto.STRING, ["N", 8])], {}, tmp / "str.onnx"))


def no_output_model(tmp: Path, model: Path) -> str:
    m = onnx.load(str(model))
    del m.graph.output[:]
    onnx.save(m, str(tmp / "noout.onnx"))
    return str(tmp / "noout.onnx")


def with_data(tmp: Path, name: str, **arrays: np.ndarray) -> str:
    np.savez(tmp / name, **arrays)  # type: ignore[arg-type]
    return str(tmp / name)


def csv_with_missing_label(tmp: Path, x: np.ndarray, y: np.ndarray) -> str:
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + ["y"])]
    lines += [",".join([*map(str, r), "" if i == 3 else str(int(lab))]) for i, (r, lab) in enumerate(zip(x, y))]
    (tmp / "d.csv").write_text("\n".join(lines) + "\n")
    return str(tmp / "d.csv")


def npy_pair(tmp: Path, x: np.ndarray, labels: bytes | np.ndarray) -> str:
    np.save(tmp / "x.npy", x)
    if isinstance(labels, bytes):
        (tmp / "labels.npy").write_bytes(labels)
    else:
        np.save(tmp / "labels.npy", labels)
    return str(tmp / "x.npy")


Case = Callable[[Doc, Path, Path, np.ndarray, np.ndarray], Any]

CASES: list[tuple[str, Case, int, str]] = [
    ("negative seed", lambda d, t, m, x, y: d.update(seed=-1), 2, "seed: -1 is less than the minimum of 0"),
    ("~user path", lambda d, t, m, x, y: d["model"].update(path="~no_such_user_0x1/m.onnx"), 2,
     "model.path: cannot expand '~no_such_user_0x1': no such user"),
    ("NUL in a path", lambda d, t, m, x, y: d["data"].update(path="d\0.npz"), 2,
     "data.path: 'd\\x00.npz' contains a NUL byte"),
    ("NUL in report.dir", lambda d, t, m, x, y: d["report"].update(dir="r\0"), 2,
     "report.dir: 'r\\x00' contains a NUL"),
    ("NaN gate bound", lambda d, t, m, x, y: d["checks"][0].update(gate={"accuracy": {"min": float("nan")}}), 2,
     "checks[0].gate.accuracy: bounds must be finite numbers"),
    ("non-numeric feed", lambda d, t, m, x, y: d["model"].update(path=two_input_model(t), input="x",
                                                                 feeds={"k": "abc"}), 4,
     "model.feeds.k: 'abc' is not a valid float32 value for input 'k'"),
    ("feed of the wrong rank", lambda d, t, m, x, y: d["model"].update(path=two_input_model(t), input="x",
                                                                       feeds={"k": None}),
     4, "model.feeds.k: a value of rank 0, but input 'k' has rank 1"),
    ("feed for no input", lambda d, t, m, x, y: d["model"].update(feeds={"nope": 1.0}), 4,
     "model.feeds.nope: ", ),
    ("0-d arrays", lambda d, t, m, x, y: d["data"].update(path=with_data(t, "z.npz", x=np.array(3.0),
                                                                         y=np.array(1))), 4,
     "holds a single value (a 0-d array), not one row per sample"),
    ("0-row dataset", lambda d, t, m, x, y: d["data"].update(path=with_data(t, "e.npz", x=x[:0], y=y[:0])), 4,
     "has no rows"),
    ("CSV header, no rows", lambda d, t, m, x, y: (t / "h.csv").write_text("a,b,y\n") and d["data"].update(
        path=str(t / "h.csv")), 4, "has a header and no rows"),
    ("model with no outputs", lambda d, t, m, x, y: d["model"].update(path=no_output_model(t, m)), 4,
     "the graph declares no outputs"),
    ("string input, float data", lambda d, t, m, x, y: d["model"].update(path=string_input_model(t)), 4,
     "data.x: model input 's' of "),
    ("fractional labels, classifier", lambda d, t, m, x, y: (d["model"].update(task="classification"), d["data"].update(
        path=with_data(t, "f.npz", x=x, y=y + 0.5))), 4,
     "data.y: labels must be whole class numbers for a classifier, but row 0 is"),
    ("NaN label in .npz", lambda d, t, m, x, y: d["data"].update(
        path=with_data(t, "n.npz", x=x, y=np.where(np.arange(len(y)) == 3, np.nan, y)), ), 4,
     "data.y: 1 labels are missing (NaN or empty) in "),
    ("empty label in .csv", lambda d, t, m, x, y: d["data"].update(path=csv_with_missing_label(t, x, y)), 4,
     "data.y: 1 labels are missing (NaN or empty) in "),
    ("NaN label in .npy", lambda d, t, m, x, y: d["data"].update(
        path=npy_pair(t, x, np.where(np.arange(len(y)) == 3, np.nan, y)), y="labels.npy"), 4,
     "data.y: 1 labels are missing (NaN or empty) in "),
    ("unreadable .npy labels", lambda d, t, m, x, y: d["data"].update(path=npy_pair(t, x, b"not numpy" * 9),
                                                                      y="labels.npy"), 4,
     "data.y: cannot read the labels file "),
]


@pytest.mark.parametrize("name,change,code,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_one_line_with_its_exit_code(tmp_path: Path, mlp, name: str, change: Case, code: int,  # type: ignore[no-untyped-def]
                                                 needle: str) -> None:
    model, data, _ = mlp
    with np.load(data) as z:
        x, y = z["x"], z["y"]
    doc: Doc = {"version": 1, "model": {"path": str(model)}, "data": {"path": str(data), "y": "y"},
                "checks": [{"use": "performance.metrics"}], "report": {"dir": str(tmp_path / "r")}}
    change(doc, tmp_path, model, x, y)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
    if name == "unreadable .npy labels":
        assert "labels.npy" in r.stderr and "x.npy" not in r.stderr.split("labels file")[0]


def test_fractional_labels_are_never_truncated() -> None:
    with pytest.raises(DataError, match=r"row 1 is 3\.5"):
        encode_labels(np.array([1.0, 3.5, 2.0]), (0, 1, 2, 3))
    np.testing.assert_array_equal(encode_labels(np.array([1.0, 3.0, 7.0]), (0, 1, 2, 3)), [1, 3, -1])
    check_class_labels(np.array([0.5, 1.5]).reshape(2, 1))  # not a 1-D label vector: another reader's business


def test_fractional_labels_with_an_auto_task_make_the_check_error_not_pass(tmp_path: Path, mlp) -> None:  # type: ignore[no-untyped-def]
    from auditor.testing import run_audit

    model, data, _ = mlp
    with np.load(data) as z:
        np.savez(tmp_path / "f.npz", x=z["x"], y=z["y"] + 0.5)
    r = run_audit({"checks": [{"use": "performance.metrics"}]}, model=model, data=tmp_path / "f.npz",
                  workdir=tmp_path)
    r.assert_status("performance.metrics", "error")
    assert "labels must be whole class numbers" in (r.check("performance.metrics").error or "")
