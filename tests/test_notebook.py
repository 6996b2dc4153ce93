"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel, shows the report as HTML, and its
numbers are the ones numpy computes for the same model and data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"


def _kernel(tmp_path: Path) -> str:
    """The ``python3`` kernel, with its kernelspec installed into a temporary folder if none is found."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=str(tmp_path / "jupyter"), kernel_name="python3")
        os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter" / "share" / "jupyter")
    return "python3"


def test_notebook_runs_and_its_numbers_are_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel imports the auditor and its plugins from wherever this test does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=_kernel(tmp_path),
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except (RuntimeError, nbclient.exceptions.DeadKernelError) as exc:  # the kernel could not start here
        if "CellExecutionError" in type(exc).__name__:
            raise
        pytest.skip(f"the Jupyter kernel could not start: {exc}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    # the report renders as HTML where it is the last value of a cell
    shown = [o for o in code[1].outputs if o.output_type == "execute_result"]
    assert shown and "Model audit" in shown[0]["data"]["text/html"]
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert {p.name for p in (tmp_path / "reports").iterdir()} == {"report.json", "report.md", "report.html"}

    # independent: the notebook's own data cell, run here, and the model's arithmetic in numpy
    scope: dict[str, Any] = {}
    exec(code[0].source.replace('model = make_linear_classifier("model.onnx", W, b)', ""), scope)
    x, y, w, b = scope["x"], scope["y"], scope["W"], scope["b"]
    logits = x @ w.astype(np.float32) + b.astype(np.float32)  # the model's float32 Gemm
    acc = float(np.mean(np.argmax(logits, axis=1) == y))
    perf = next(c for c in report["checks"] if c["id"] == "performance.metrics")
    assert perf["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    printed = "".join(o.get("text", "") for o in code[2].outputs)
    assert f"accuracy: {perf['metrics']['accuracy']}" in printed and f"status: {report['status']}" in printed
    assert report["gating"] == {"checks": 3, "checks_gated": 1, "gates": 2, "gates_met": 2}
