"""The model task is an enum (like severity, status and gate operators), validated where it is built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from auditor import Predictions, Task
from auditor.errors import SpecError
from auditor.model import ModelConfig
from auditor.outputs import interpret
from auditor.plugins import build_registry
from auditor.spec import parse_spec


def test_model_config_takes_a_task_name_and_refuses_a_typo() -> None:
    assert ModelConfig(path=Path("m.onnx"), task="regression").task is Task.REGRESSION
    assert ModelConfig(path=Path("m.onnx")).task is Task.AUTO
    with pytest.raises(ValueError, match=r"model.task 'clasification' is not one of auto, classification, regression"):
        ModelConfig(path=Path("m.onnx"), task="clasification")  # type: ignore[arg-type]


def test_predictions_hold_a_decided_task() -> None:
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    p = Predictions(task="classification", kind="probabilities", raw={}, probs=probs)  # type: ignore[arg-type]
    assert p.task is Task.CLASSIFICATION and p.task == "classification" and str(p.task) == "classification"
    assert json.dumps({"task": p.task}) == '{"task": "classification"}'
    with pytest.raises(ValueError, match="must be decided"):
        Predictions(task=Task.AUTO, kind="values", raw={})
    with pytest.raises(ValueError, match="'classifier' is not one of"):
        Predictions(task="classifier", kind="values", raw={})  # type: ignore[arg-type]


def test_interpret_decides_auto_and_follows_an_explicit_task() -> None:
    scores = {"out": np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=np.float32)}
    auto = interpret(scores)
    assert auto.task is Task.CLASSIFICATION and auto.labels is not None and auto.labels.tolist() == [0, 1]
    forced = interpret(scores, task="regression")
    assert forced.task is Task.REGRESSION and forced.values is not None
    np.testing.assert_array_equal(forced.values, scores["out"].astype(np.float64))
    with pytest.raises(ValueError, match="task 'regresion' is not one of"):
        interpret(scores, task="regresion")


def test_a_spec_with_an_unknown_task_is_a_spec_error(tmp_path: Path) -> None:
    registry = build_registry()
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nmodel: {path: m.onnx, task: regresion}\nchecks: [{use: sparsity.profile}]\n")
    with pytest.raises(SpecError) as e:
        parse_spec(spec, registry.checks, sorted(registry.reporters))
    assert any(p.startswith("model.task:") and "regression" in p for p in e.value.problems), e.value.problems
    spec.write_text("version: 1\nmodel: {path: m.onnx, task: regression}\nchecks: [{use: sparsity.profile}]\n")
    assert parse_spec(spec, registry.checks, sorted(registry.reporters)).model.task is Task.REGRESSION
