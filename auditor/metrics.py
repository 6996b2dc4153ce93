"""The metric tree of a check, walked in one place: dotted look-up (what gates address), flattening (what diff
compares and tables show) and short formatting (what every text format prints).

A check's metrics are a JSON tree: dicts, lists and scalars. A dotted path names one node: ``accuracy``,
``per_class_recall.3``, ``curve.-1.accuracy`` (list items by index, negative from the end). Keys may contain
dots themselves (ONNX initializer names such as ``conv1.weight``): at each level the longest run of path parts
that is a key is tried first, then shorter ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from auditor.jsonenc import json_number

__all__ = ["format_value", "get", "leaves", "lookup", "number", "scalars"]

_MISSING = object()


def lookup(tree: Any, path: str) -> Any:
    """The node at dotted ``path`` in ``tree``; ``KeyError(path)`` if there is none."""

    def walk(cur: Any, parts: list[str]) -> Any:
        if not parts:
            return cur
        if isinstance(cur, Mapping):
            for k in range(len(parts), 0, -1):
                key = ".".join(parts[:k])
                for cand in (key, int(key)) if key.lstrip("-").isdigit() else (key,):
                    if cand in cur:
                        try:
                            return walk(cur[cand], parts[k:])
                        except KeyError:
                            continue
        elif isinstance(cur, list) and parts[0].lstrip("-").isdigit() and -len(cur) <= int(parts[0]) < len(cur):
            return walk(cur[int(parts[0])], parts[1:])
        raise KeyError(path)

    return walk(tree, path.split("."))


def get(tree: Any, path: str, default: Any = None) -> Any:
    """:func:`lookup` with a default instead of ``KeyError`` (``tree`` may be ``None``)."""
    if tree is None:
        return default
    try:
        return lookup(tree, path)
    except KeyError:
        return default


def number(tree: Any, path: str) -> float | None:
    """The node at ``path`` as a number (see :func:`auditor.jsonenc.json_number`), ``None`` if absent or not
    a number."""
    return json_number(get(tree, path, _MISSING))


def _walk(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        if not value and prefix:
            yield prefix, value
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        if not value and prefix:
            yield prefix, value
        for i, v in enumerate(value):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, value


def leaves(tree: Any) -> dict[str, Any]:
    """Every leaf of ``tree`` under its dotted path (list items by index, as gates address them; empty dicts
    and lists are leaves too)."""
    return dict(_walk(tree, ""))


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def scalars(tree: Mapping[str, Any], *, max_depth: int = 3, max_keys: int | None = None,
            inline_lists: int = 12) -> list[tuple[str, Any]]:
    """Rows to show in a table or a line: ``(dotted.name, value)`` for scalars, nested dicts expanded down to
    ``max_depth`` levels (and only those with at most ``max_keys`` entries, when given), lists of at most
    ``inline_lists`` scalars shown whole; longer lists, lists of dicts and matrices are left to the plots."""
    rows: list[tuple[str, Any]] = []

    def walk(node: Mapping[str, Any], prefix: str, depth: int) -> None:
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, Mapping):
                if depth < max_depth and (max_keys is None or len(v) <= max_keys):
                    walk(v, name + ".", depth + 1)
            elif isinstance(v, list):
                if inline_lists and len(v) <= inline_lists and all(_is_scalar(x) for x in v):
                    rows.append((name, v))
            elif _is_scalar(v):
                rows.append((name, v))

    walk(tree, "", 0)
    return rows


def format_value(v: Any, digits: int = 4, width: int = 80) -> str:
    """Short text for a metric value: ``digits`` significant digits for floats, ``–`` for ``None`` (a
    non-finite number in a JSON report), lists and dicts cut at ``width`` characters."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        text = "[" + ", ".join(format_value(x, digits, width) for x in v) + "]"
    elif isinstance(v, Mapping):
        text = "{" + ", ".join(f"{k}: {format_value(x, digits, width)}" for k, x in v.items()) + "}"
    else:
        text = str(v)
    return text if len(text) <= width else text[: width - 1] + "…"
