"""The Python API: ``auditor.audit(spec, model=..., data=...)`` gives the same numbers as the CLI path from files,
for numpy arrays, a DataFrame, a Dataset and an ``onnx.ModelProto``; the typed report's views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from builders import blobs, mlp_numpy, mlp_weights, write_mlp
from sklearn.metrics import accuracy_score

import auditor
from auditor.api import as_dataset
from auditor.errors import DataError, SpecError
from auditor.metrics import leaves
from auditor.report.markdown import MarkdownReporter
from auditor.testing import run_audit

CHECKS: list[dict[str, Any]] = [
    {"use": "performance.metrics", "gate": {"accuracy": {"min": 0.5}, "ece": {"max": 0.0}}},
    {"use": "bias.group_metrics", "with": {"bootstrap": 20}},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("api")
    w = mlp_weights()
    model = write_mlp(tmp / "m.onnx", w)
    x, y = blobs(w=w)
    sex = np.where(np.arange(len(y)) % 3 == 0, "f", "m")
    np.savez(tmp / "d.npz", x=x, y=y, sex=sex)
    from_files = run_audit({"data": {"path": str(tmp / "d.npz"), "y": "y", "groups": ["sex"]}, "checks": CHECKS},
                           model=model, workdir=tmp)
    assert from_files.report is not None, from_files.error
    return {"tmp": tmp, "model": model, "x": x, "y": y, "sex": sex, "w": w, "files": from_files.report}


def _same_numbers(a: auditor.AuditReport, b: auditor.AuditReport) -> None:
    for ca, cb in zip(a.checks, b.checks):
        assert ca.id == cb.id and ca.status == cb.status
        assert json.dumps(ca.metrics, sort_keys=True, default=str) == json.dumps(cb.metrics, sort_keys=True,
                                                                                 default=str)
        assert [g.to_dict() for g in ca.gates] == [g.to_dict() for g in cb.gates]


def test_arrays_dataframe_dataset_and_modelproto_give_the_file_numbers(setup: dict[str, Any]) -> None:
    x, y, sex = setup["x"], setup["y"], setup["sex"]
    acc = accuracy_score(y, mlp_numpy(x, setup["w"]).argmax(1))
    arrays = auditor.audit({"checks": CHECKS}, model=setup["model"], data={"x": x, "y": y, "groups": {"sex": sex}})
    assert arrays.metrics("performance.metrics")["accuracy"] == pytest.approx(acc, abs=1e-12)
    _same_numbers(arrays, setup["files"])
    assert arrays.data is not None and arrays.data["path"] == "numpy arrays (300 rows)"

    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y, sex=sex)
    frame = auditor.audit({"checks": CHECKS}, model=onnx.load(str(setup["model"])), data=df, groups=["sex"])
    _same_numbers(frame, setup["files"])
    assert frame.data is not None and frame.data["groups"] == ["sex"]

    ds = as_dataset((x, y, {"sex": sex}))
    _same_numbers(auditor.audit({"checks": CHECKS}, model=setup["model"], data=ds), setup["files"])


def test_spec_file_and_parsed_spec_with_overrides(setup: dict[str, Any], tmp_path: Path) -> None:
    x, y = setup["x"], setup["y"]
    spec = tmp_path / "audit.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "model": {"path": "missing.onnx"},
                                    "data": {"path": "missing.npz", "y": "y", "limit": 120},
                                    "checks": [CHECKS[0]]}))
    r = auditor.audit(spec, model=setup["model"], data=(x, y))
    # the spec's limit still applies to data given in Python (a seeded, stratified sample)
    assert r.data is not None and r.data["rows"] == 120 and r.data["total_rows"] == 300
    lines = spec.read_text().splitlines()
    assert r.check("performance.metrics").spec_line == 1 + next(i for i, ln in enumerate(lines) if "use:" in ln)
    from auditor.plugins import build_registry
    from auditor.spec import parse_spec

    registry = build_registry()
    parsed = parse_spec(spec, registry.checks, sorted(registry.reporters))
    again = auditor.audit(parsed, model=setup["model"], data=(x, y))
    _same_numbers(again, r)
    assert parsed.model.path.name == "missing.onnx"  # the caller's Spec is not changed


def test_bad_data_and_specs_raise_the_cli_errors(setup: dict[str, Any]) -> None:
    x, y = setup["x"], setup["y"]
    with pytest.raises(SpecError, match="needs labels"):
        auditor.audit({"checks": [CHECKS[0]]}, model=setup["model"], data=x)
    with pytest.raises(DataError, match="3 rows but x has 300"):
        auditor.audit({"checks": [CHECKS[0]]}, model=setup["model"], data=(x, y[:3]))
    with pytest.raises(DataError, match="label column 'target' not in the DataFrame"):
        auditor.audit({"checks": [CHECKS[0]]}, model=setup["model"], data=pd.DataFrame(x), label="target")
    with pytest.raises(TypeError, match="spec must be a path, a dict or a Spec"):
        auditor.audit(42, model=setup["model"])  # type: ignore[arg-type]


def test_report_views_passed_check_frame_save_and_html(setup: dict[str, Any], tmp_path: Path) -> None:
    r = auditor.audit({"checks": CHECKS}, model=setup["model"],
                      data={"x": setup["x"], "y": setup["y"], "groups": {"sex": setup["sex"]}})
    # ece max 0 cannot hold: the gated check fails, so the audit does not pass
    assert r.status.value == "fail" and r.passed is False
    assert r.check("bias.group_metrics").status.value == "info"
    with pytest.raises(KeyError, match="no check 'nope'"):
        r.check("nope")
    frame = r.to_frame()
    perf = frame[frame["check"] == "performance.metrics"].set_index("metric")
    assert perf.loc["accuracy", "value"] == r.metrics("performance.metrics")["accuracy"]
    assert perf.loc["accuracy", "gate"] == "min 0.5" and perf.loc["accuracy", "gate_status"] == "pass"
    assert perf.loc["ece", "gate_status"] == "fail"
    assert len(frame) == sum(1 for c in r.checks for k, v in leaves(c.metrics).items()
                             if not isinstance(v, (dict, list)))
    written = r.save(tmp_path / "out", formats=["json", "markdown"])
    assert [p.name for p in written] == ["report.json", "report.md"]
    assert json.loads(written[0].read_text()) == json.loads(r.to_json())
    assert written[1].read_text() == MarkdownReporter().render(r)
    page = r._repr_html_()
    assert ">fail</span>" in page and "1 of 2 checks gated, 1 of 2 gates met" in page
    assert "ece = " in page and "<table>" in page
