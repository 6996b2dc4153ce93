"""Fixtures for the core tests (builders live in ``builders.py``: importing ``conftest`` by name is ambiguous
when several test folders have one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import blobs, mlp_weights, write_mlp


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A dynamic-batch MLP classifier, its data (.npz with x, y), and its weights."""
    w = mlp_weights()
    model = write_mlp(tmp_path / "mlp.onnx", w)
    x, y = blobs(w=w)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    return model, data, w


@pytest.fixture(scope="session")
def exact_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Any]:
    """The checks that ran whole until #14, audited locally on small shards once a session (``shard_exact``):
    the folder, the spec's sections and the result."""
    from shard_exact import SHARD_ROWS, audit, exact_files

    d = tmp_path_factory.mktemp("exact")
    files = exact_files(d)
    return d, files, audit(d, files, SHARD_ROWS)
