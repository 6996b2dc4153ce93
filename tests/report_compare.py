"""Comparing two reports of the same audit field by field (local and Ray runs, runs with different shard sizes):
everything but timings, ``environment.execution`` and the notes that say a shard ran again."""

from __future__ import annotations

from typing import Any

#: Fields that may differ between two runs of the same audit anywhere: timings, and how the run was executed.
VOLATILE = {"duration_s", "started_at"}


def comparable(doc: Any, path: str = "") -> Any:
    """The report without timings, ``environment.execution`` and the notes that say a shard was rerun."""
    if isinstance(doc, dict):
        return {k: comparable(v, f"{path}.{k}") for k, v in doc.items()
                if k not in VOLATILE and f"{path}.{k}" != ".environment.execution"}
    if isinstance(doc, list):
        return [comparable(v, path) for v in doc
                if not (path.endswith(".notes") and isinstance(v, str) and v.startswith("ray: "))]
    return doc


def assert_same(local: dict[str, Any], other: dict[str, Any]) -> None:
    """Field by field, so that a failure names the first differing field."""
    a, b = comparable(local), comparable(other)

    def walk(x: Any, y: Any, where: str) -> None:
        assert type(x) is type(y), f"{where}: {x!r} vs {y!r}"
        if isinstance(x, dict):
            assert sorted(x) == sorted(y), f"{where}: keys {sorted(x)} vs {sorted(y)}"
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), f"{where}: {len(x)} vs {len(y)} items"
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        else:
            assert x == y, f"{where}: {x!r} vs {y!r}"

    walk(a, b, "report")
