"""The audit that tests/test_shard_exact.py and tests/test_ray.py share: the checks that ran whole until #14,
on small shards (``execution.shard_rows``), run once per test session (the ``exact_audit`` fixture)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from builders import blobs, mlp_numpy, mlp_weights, write_mlp

from auditor.testing import run_audit

HAS_TORCH = importlib.util.find_spec("torch") is not None
#: Rows per shard of the sharded runs: 6 to 14 shards per check, the last one short.
SHARD_ROWS = 23


def exact_files(d: Path) -> dict[str, Any]:
    """A classifier, a differently seeded reference, 300 rows whose input 0 is binary (a sensitive feature),
    a group column and an aligned/conflicting column: the spec's sections, the caller adds the checks."""
    w = mlp_weights()
    x, y = blobs(w=w)
    x[:, 0] = (x[:, 0] > 0).astype(np.float32)
    y = mlp_numpy(x, w).argmax(1)
    y[::7] = (y[::7] + 1) % 4  # some rows wrong, so that accuracies are not all 1
    site = np.where(np.arange(len(y)) % 3 == 0, "a", "b")
    np.savez(d / "d.npz", x=x, y=y, site=site, aligned=(np.arange(len(y)) % 4 != 0).astype(np.int64))
    return {"model": {"path": str(write_mlp(d / "m.onnx", w))},
            "reference": {"path": str(write_mlp(d / "r.onnx", mlp_weights(seed=5)))},
            "data": {"path": str(d / "d.npz"), "y": "y", "groups": ["site"], "columns": ["aligned"]},
            "seed": 9, "report": {"dir": str(d / "reports")}}


#: Each sharded check on settings where its numbers are not trivial; ``limit`` below the rows: a seeded sample.
CHECKS: list[dict[str, Any]] = [
    {"use": "transfer.attribution_distance", "with": {"method": "occlusion", "limit": 120, "patch": 2}},
    {"use": "transfer.attribution_distance", "name": "attribution.mean",
     "with": {"method": "occlusion", "limit": 300, "baseline": "mean", "score": "probability",
              "target": "label"}},
    {"use": "transfer.similarity", "with": {"rsa": False, "layers": ["h", "hr", "probs"]}},  # CKA from sums
    {"use": "transfer.similarity", "name": "similarity.rsa", "with": {"limit": 270}},  # features gathered
    {"use": "transfer.similarity", "name": "similarity.minibatch", "with": {"minibatch": 60}},  # whole, 1 worker
    {"use": "bias.leakage", "with": {"limit": 250}},
    {"use": "bias.leakage", "name": "leakage.hidden", "with": {"features": "hr"}},
    {"use": "bias.shortcut", "with": {"transform": "swap_feature", "feature": 0, "aligned": "aligned",
                                      "target_class": 1, "limit": 280}},
    {"use": "bias.shortcut", "name": "shortcut.groups", "with": {"transform": "swap_groups", "group": "site",
                                                                 "features": [1, 2, 3]}},
    {"use": "bias.shortcut", "name": "shortcut.set", "with": {"transform": "set_feature", "feature": 4,
                                                              "value": 2.5}},
]
if HAS_TORCH:
    CHECKS += [{"use": "torch.parity", "with": {"limit": 290}},
               {"use": "transfer.attribution_distance", "name": "attribution.gradient",
                "with": {"method": "gradient", "limit": 200}}]


def audit(d: Path, files: dict[str, Any], shard_rows: int, **execution: Any) -> Any:
    """:data:`CHECKS` on ``files`` with ``shard_rows`` rows a shard (``execution``: e.g. ``engine: ray``); every
    check must have run."""
    res = run_audit({**files, "checks": CHECKS, "execution": {"shard_rows": shard_rows, **execution}},
                    workdir=d)
    assert res.exit_code in (0, 1), res.error
    for c in res.doc["checks"]:
        assert c["status"] in ("info", "pass", "warn", "fail"), (c["id"], c.get("error"), c.get("skip_reason"))
    return res
