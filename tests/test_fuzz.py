"""Property-based fuzz (Hypothesis) of the spec reader and of the model loader, with a bounded budget: every
outcome is a documented exit code (0, 1, 2, 4; never 3 = internal error) with no traceback, and an error is one
line. ``benchmarks/fuzz_inputs.py`` runs the same generators much longer, in subprocesses."""

from __future__ import annotations

import random
from pathlib import Path

import fuzzing
import numpy as np
import onnx
import pytest
import yaml
from builders import blobs, mlp_weights, write_mlp
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.cli import main

DOCUMENTED = {0, 1, 2, 4}
FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    w = mlp_weights()
    write_mlp(d / "mlp.onnx", w)
    x, y = blobs(n=40, w=w)
    np.savez(d / "data.npz", x=x, y=y)
    return d


def run(spec: Path) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["run", str(spec), "-q", "--disable", "torch"])
    return r.exit_code, r.stderr + r.stdout


def assert_documented(code: int, out: str, what: str) -> None:
    assert code in DOCUMENTED, f"exit {code} for {what!r}:\n{out[-3000:]}"
    assert "Traceback" not in out, f"traceback for {what!r}:\n{out[-3000:]}"
    if code in (2, 4):
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, out


@FUZZ
@given(text=fuzzing.spec_texts())
def test_fuzzed_specs_end_in_a_documented_exit_code(workdir: Path, text: str) -> None:
    spec = workdir / "spec.yaml"
    spec.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out = run(spec)
    assert_documented(code, out, text[:500])


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_models_end_in_a_documented_exit_code(workdir: Path, seed: int) -> None:
    rng = random.Random(seed)
    model = onnx.load(str(workdir / "mlp.onnx"))
    data = fuzzing.mutate_model(model, rng)
    path = workdir / "mutant.onnx"
    path.write_bytes(data)
    spec = workdir / "mutant.yaml"
    doc = {"version": 1, "model": {"path": str(path)}, "checks": [{"use": "sparsity.profile"}],
           "report": {"dir": str(workdir / "r")}}
    if rng.random() < 0.7:  # else a weights-only audit
        doc["data"] = {"path": str(workdir / "data.npz")}
        doc["checks"].append({"use": "performance.metrics"})
    spec.write_text(yaml.safe_dump(doc))
    code, out = run(spec)
    assert_documented(code, out, f"model mutation seed {seed}")
    assert code != 2, out  # the spec is valid: a bad model is exit 4 (or a check error), never a spec error
