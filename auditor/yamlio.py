"""A safe, bounded YAML reader that remembers where every key is.

PyYAML's ``safe_load`` builds no Python objects from tags, but it lets the last of two duplicate keys win
silently, recurses once per nesting level (a deep document is a ``RecursionError``), and expands aliases
without limit (a few hundred bytes of nested aliases become gigabytes once walked). :func:`load` reads a
document with the pure-Python safe parser and refuses each of those as a :class:`YamlProblem` naming the line:

- duplicate keys in one mapping (both lines named; ``<<`` merges may still override, as YAML intends);
- nesting deeper than :data:`MAX_DEPTH`;
- more than :data:`MAX_NODES` nodes once aliases are expanded, and aliases that contain themselves;
- keys that are not strings (``1: x``; a spec's keys are names), and tags that build sets, bytes or pairs.

It also returns a map from each YAML path (a tuple of keys and list indices, as the document is indexed) to
the 1-based line where that entry starts: the key's line for a mapping entry, the item's line for a list item.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from auditor.errors import short as _short

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted (a spec needs about six)."""

MAX_NODES = 100_000
"""Most nodes a document may have once every alias is expanded (a large spec has a few thousand)."""

MAX_BYTES = 4 * 1024 * 1024
"""Largest document accepted, in bytes."""

Path_ = tuple[str | int, ...]
"""A YAML path: mapping keys and list indices from the top."""


class YamlProblem(Exception):
    """The document cannot be used as a spec; ``line`` is 1-based where known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth bound while composing and duplicate-key / key-type checks while constructing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # Composition recurses once per level; bound it before Python's own recursion limit is reached.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                peek: Callable[[], yaml.Event] = self.peek_event  # typed here: untyped in types-PyYAML
                mark = peek().start_mark
                raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels", None if mark is None else mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                shown = "null" if key is None else repr(key)
                raise YamlProblem(f"key {_short(shown)} is not a string (quote it: '{_short(str(key))}')",
                                  _line(key_node))
            if key in seen:
                raise YamlProblem(f"duplicate key '{_short(key)}' (first on line {seen[key]})", _line(key_node))
            seen[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)


def _refuse(loader: _Loader, node: Node) -> Any:
    raise YamlProblem(f"the YAML tag {node.tag} is not allowed in a spec", _line(node))


def _timestamp_as_text(loader: _Loader, node: Node) -> Any:
    # A date-looking value stays the text it was written as (JSON has no dates).
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("set", "binary", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _check_expansion(root: Node) -> None:
    """Refuse self-containing aliases and documents larger than :data:`MAX_NODES` once expanded.

    Sizes are memoised per node, so a shared (aliased) subtree is measured once: the check is linear in the
    text even when the expansion is exponential.
    """
    size: dict[int, int] = {}
    active: set[int] = set()

    def measure(node: Node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in active:
            raise YamlProblem("an alias refers to a node that contains it", _line(node))
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += measure(child)
                if total > MAX_NODES:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += measure(k) + measure(v)
                if total > MAX_NODES:
                    break
        active.discard(key)
        if total > MAX_NODES:
            raise YamlProblem(f"more than {MAX_NODES} values once aliases are expanded", _line(node))
        size[key] = total
        return total

    # Nesting is already bounded by MAX_DEPTH, so this recursion is too.
    measure(root)


def _record_lines(node: Node, value: Any, path: Path_, lines: dict[Path_, int]) -> None:
    if isinstance(node, MappingNode) and isinstance(value, dict):
        # Later entries win in a mapping (a ``<<`` merge puts the merged ones first): record the last.
        for k, v in reversed(node.value):
            if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, ScalarNode):
                continue
            key = k.value
            if key in value and (*path, key) not in lines:
                lines[(*path, key)] = _line(k)
                _record_lines(v, value[key], (*path, key), lines)
    elif isinstance(node, SequenceNode) and isinstance(value, list):
        for i, (child, item) in enumerate(zip(node.value, value)):
            lines[(*path, i)] = _line(child)
            _record_lines(child, item, (*path, i), lines)


def load(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document; return it and the line of every entry. Raise :class:`YamlProblem`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlProblem(f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        loader = _Loader(text)  # the reader refuses unprintable characters (a NUL byte) right here
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {_short(str(exc).splitlines()[0], 200)}") from None
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # pragma: no cover - MAX_DEPTH is far below the interpreter's limit
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels") from None
        if root is None:
            return None, {}
        _check_expansion(root)
        doc = loader.construct_document(root)
        lines: dict[Path_, int] = {(): _line(root)}
        _record_lines(root, doc, (), lines)
        return doc, lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlProblem(f"invalid YAML: {_short(str(problem), 200)}",
                          int(mark.line) + 1 if mark is not None else None) from None
    finally:
        loader.dispose()
