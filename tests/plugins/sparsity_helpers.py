"""Builders for the sparsity plugin's tests: small ONNX models with planted weights (IR 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from auditor.context import AuditContext
from auditor.model import ModelConfig, ModelHandle
from auditor.results import CheckResult
from auditor.testing import save_model

FLOAT = TensorProto.FLOAT
#: The other built-in plugins, switched off in these tests so that they exercise the installed ``sparsity``
#: entry point alone (and do not depend on the state of plugins being written beside it).
OTHER_PLUGINS = ("performance", "robustness", "bias", "transfer", "torch")


def save(nodes: list[onnx.NodeProto], x: onnx.ValueInfoProto, out: onnx.ValueInfoProto,
         inits: dict[str, np.ndarray], path: Path, *, external: bool = False, opset: int = 17) -> Path:
    """Write a one-input, one-output graph; ``external`` stores every initializer in a side file."""
    g = helper.make_graph(nodes, "planted", [x], [out],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    if external:
        return save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                          location=path.name + ".data", size_threshold=0)
    return save_model(m, path)


def run_check(check_cls: type, path: Path, **params: Any) -> CheckResult:
    """Run one weights-only check directly on a model (no data), defaults filled in."""
    handle = ModelHandle(ModelConfig(path=path))
    p = {**check_cls.defaults(), **params}
    ctx = AuditContext(check_id=check_cls.name, params=p, model=handle, data=None, seed=0,
                       rng=np.random.default_rng(0))
    result: CheckResult = check_cls().run(ctx, check_cls.build_params(p))
    return result


def with_singular_values(rows: int, cols: int, s: np.ndarray, seed: int = 0) -> np.ndarray:
    """A ``rows x cols`` matrix ``U diag(s) V^T`` with random orthonormal ``U``, ``V`` (float64)."""
    r = np.random.default_rng(seed)
    k = len(s)
    u, _ = np.linalg.qr(r.normal(size=(rows, k)))
    v, _ = np.linalg.qr(r.normal(size=(cols, k)))
    return (u * np.asarray(s, dtype=np.float64)) @ v.T


def prune_to(w: np.ndarray, zeros: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``w`` with exactly ``zeros`` zero entries: the existing zeros plus random others."""
    out = w.copy()
    flat = out.reshape(-1)
    nonzero = np.flatnonzero(flat != 0)
    extra = zeros - (flat.size - nonzero.size)
    assert extra >= 0
    flat[rng.choice(nonzero, size=extra, replace=False)] = 0
    assert int(np.sum(out == 0)) == zeros
    return out
