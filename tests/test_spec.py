"""Spec validation: every problem at once, each with its YAML path; YAML is loaded safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import SpecError
from auditor.plugins import build_registry
from auditor.spec import load_yaml, parse_spec


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return build_registry()


def parse(tmp_path: Path, text: str, registry) -> object:  # type: ignore[no-untyped-def]
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return parse_spec(p, registry.checks, sorted(registry.reporters))


def test_all_problems_reported_at_once_with_paths_and_suggestions(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    text = """
version: 1
modle: {path: m.onnx}
data: {path: d.npz, batchsize: 3, limit: -1}
checks:
  - use: performance.metric
  - use: performance.metrics
    with: {ece_bins: "ten", nope: 1}
    gate: {accuracy: {minimum: 0.9}}
"""
    with pytest.raises(SpecError) as e:
        parse(tmp_path, text, registry)
    problems = e.value.problems
    joined = "\n".join(problems)
    assert "model: required key missing" in joined, joined
    assert "modle: unknown key (did you mean 'model'?)" in joined
    assert "data.batchsize: unknown key (did you mean 'batch_size'?)" in joined
    assert "data.limit: -1 is less than the minimum of 1" in joined
    assert "checks[0].use: unknown check 'performance.metric' (did you mean 'performance.metrics'?)" in joined
    assert "checks[1].with.ece_bins: 'ten' is not of type integer" in joined
    assert "checks[1].with.nope: unknown key" in joined
    assert "checks[1].gate.accuracy.minimum: unknown key (did you mean 'min'?)" in joined
    assert str(e.value).startswith(str(tmp_path / "spec.yaml"))
    assert "\n" not in str(e.value)


def test_defaults_filled_and_paths_resolved_against_the_spec(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    spec = parse(tmp_path, "version: 1\nmodel: {path: m.onnx}\ndata: {path: d.npz, y: y}\n"
                           "checks: [{use: performance.metrics, name: acc}]\n", registry)
    assert spec.model.path == tmp_path / "m.onnx"  # type: ignore[attr-defined]
    c = spec.checks[0]  # type: ignore[attr-defined]
    assert c.id == "acc" and c.params == {"ece_bins": 15, "top_k": 5}


def test_duplicate_ids_and_delta_gates_without_baseline(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    text = """version: 1
model: {path: m.onnx}
data: {path: d.npz, y: y}
checks:
  - use: performance.metrics
    gate: {accuracy: {max_drop: 0.01}}
  - use: performance.metrics
"""
    with pytest.raises(SpecError) as e:
        parse(tmp_path, text, registry)
    joined = " ".join(e.value.problems)
    assert "max_drop/max_increase need a baseline" in joined
    assert "checks[1]: id 'performance.metrics' is already used by checks[0]" in joined


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("version: !!python/object/apply:os.system ['echo pwned > %s']\n" % (tmp_path / "pwned"))
    with pytest.raises(SpecError, match="invalid YAML"):
        load_yaml(p)
    assert not (tmp_path / "pwned").exists()


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nmodel: {path: m.onnx\nchecks: []\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_yaml(p)


def test_labels_needed_but_missing_fails_up_front(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError, match=r"checks\[0\] \(performance.metrics\): needs labels: set data.y"):
        parse(tmp_path, "version: 1\nmodel: {path: m.onnx}\ndata: {path: d.csv}\n"
                        "checks: [{use: performance.metrics}]\n", registry)
