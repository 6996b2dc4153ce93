"""Writing retrained weights back into a copy of the original ONNX graph (same nodes, new initializers),
and the feature statistics reported for a retrained model (computed with numpy on ONNX Runtime outputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from auditor import ModelHandle
from auditor import graph as G


def write_model(handle: ModelHandle, values: dict[str, np.ndarray], path: Path) -> Path:
    """Save the audited model with the initializers in ``values`` replaced (dtype and shape kept).

    Initializers stored as external data that are not replaced are copied inline, so the new file stands
    on its own (retraining is for models small enough to fit in one protobuf).
    """
    model = onnx.ModelProto()
    model.CopyFrom(handle.proto)
    refs = {r.name: r for r in G.iter_weights(handle.proto)}
    for i, init in enumerate(model.graph.initializer):
        if init.name in values:
            old = refs[init.name]
            arr = np.asarray(values[init.name]).astype(old.dtype, copy=False).reshape(old.shape)
        elif init.data_location == onnx.TensorProto.EXTERNAL:
            arr = np.array(handle.read_weight(refs[init.name]))
        else:
            continue
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def feature_rank(features: np.ndarray, energy: float = 0.99) -> int:
    """Number of principal components that explain ``energy`` of the variance of the (N, D) features
    (Andriushchenko et al. 2023: "the minimal number of principal components that capture 99% of the
    variance"). 0 for constant features."""
    a = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    a = a - a.mean(axis=0, keepdims=True)
    s = np.linalg.svd(a, compute_uv=False)
    var = s ** 2
    total = var.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(var) / total
    return int(np.searchsorted(cum, energy - 1e-12) + 1)


def dead_units(features: np.ndarray) -> tuple[int, int]:
    """``(dead, total)`` units: a unit (a column of 2-D features, a channel — axis 1 — of N-D ones) is dead
    when it is exactly zero on every sample (a ReLU that never fires)."""
    a = np.asarray(features)
    if a.ndim == 1:
        a = a[:, None]
    axes = tuple(i for i in range(a.ndim) if i != 1)
    alive = np.any(a != 0, axis=axes)
    return int((~alive).sum()), int(alive.size)
