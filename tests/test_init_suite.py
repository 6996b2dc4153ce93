"""``auditor init`` writes a starter suite that fits the data: weight checks always; metrics (with calibration)
and noise when there are labels; group fairness when there are group columns; each with a gate to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from click.testing import CliRunner

from auditor.cli import main


def _uses(spec: Path) -> list[str]:
    return [c["use"] for c in yaml.safe_load(spec.read_text())["checks"]]


def test_suite_fits_labels_and_groups(tmp_path: Path, mlp: tuple[Path, Path, Any]) -> None:
    model, _, _ = mlp
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    np.savez(tmp_path / "grouped.npz", x=x, y=np.arange(40) % 4, site=np.where(np.arange(40) % 2, "a", "b"))
    np.savez(tmp_path / "unlabelled.npz", x=x)
    out = tmp_path / "a.yaml"
    assert CliRunner().invoke(main, ["init", str(model), "--data", str(tmp_path / "grouped.npz"),
                                     "-o", str(out)]).exit_code == 0
    text = out.read_text()
    assert _uses(out) == ["performance.metrics", "robustness.noise", "bias.group_metrics", "sparsity.profile",
                          "sparsity.conditioning"]
    assert yaml.safe_load(text)["data"]["groups"] == ["site"]
    # every check has a gate to start from: active on the headline metric and on weight defects (NaN / infinite,
    # all-zero layers: tests/test_init_gates.py), commented on the others
    for use in ("robustness.noise", "bias.group_metrics", "sparsity.profile", "sparsity.conditioning"):
        block = text[text.index(f"use: {use}"):].split("\n  - use:")[0]
        assert ("\n    gate:" if use == "sparsity.profile" else "# gate: {") in block, use
    r = CliRunner().invoke(main, ["run", str(out), "--report-dir", str(tmp_path / "r"), "-q"])
    assert r.exit_code in (0, 1), r.output  # the spec is valid and runs; the 0.9 gate may or may not hold
    bare = tmp_path / "b.yaml"
    assert CliRunner().invoke(main, ["init", str(model), "--data", str(tmp_path / "unlabelled.npz"),
                                     "-o", str(bare)]).exit_code == 0
    assert _uses(bare) == ["sparsity.profile", "sparsity.conditioning"]
    assert "y" not in yaml.safe_load(bare.read_text())["data"]
    r = CliRunner().invoke(main, ["run", str(bare), "--report-dir", str(tmp_path / "r2"), "-q"])
    assert r.exit_code == 0, r.output
