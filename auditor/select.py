"""``-k EXPR``: choose checks by id the way pytest's ``-k`` chooses tests.

``EXPR`` combines words with ``and``, ``or``, ``not`` and parentheses; a word matches a check whose id
contains it (case-insensitive). ``-k "noise or square"``, ``-k "not torch"``, ``-k "bias and not skew"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from auditor.errors import SpecError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
_Item = TypeVar("_Item")


def _either(a: Callable[[str], bool], b: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda s: a(s) or b(s)


def _both(a: Callable[[str], bool], b: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda s: a(s) and b(s)


def compile_expr(expr: str) -> Callable[[str], bool]:
    """A predicate on check ids for ``expr``; :class:`SpecError` (exit 2) when it does not parse."""
    tokens: list[str] = [t for t in _TOKEN.findall(expr) if t]
    pos = 0

    def fail(why: str) -> SpecError:
        return SpecError("-k", [f"{expr!r}: {why}"])

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise fail("unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def parse_or() -> Callable[[str], bool]:
        left = parse_and()
        while peek() == "or":
            take()
            left = _either(left, parse_and())
        return left

    def parse_and() -> Callable[[str], bool]:
        left = parse_not()
        while peek() == "and":
            take()
            left = _both(left, parse_not())
        return left

    def parse_not() -> Callable[[str], bool]:
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda s: not inner(s)
        tok = take()
        if tok == "(":
            inner = parse_or()
            if take() != ")":
                raise fail("missing ')'")
            return inner
        if tok in (")", "and", "or"):
            raise fail(f"unexpected '{tok}'")
        word = tok.lower()
        return lambda s: word in s.lower()

    if not tokens:
        raise fail("empty expression")
    pred = parse_or()
    if pos != len(tokens):
        raise fail(f"unexpected '{tokens[pos]}'")
    return pred


def select_checks(checks: Sequence[_Item], expr: str) -> tuple[list[_Item], list[_Item]]:
    """``(selected, deselected)`` checks (anything with an ``id``) for ``expr``, in spec order."""
    pred = compile_expr(expr)
    chosen = [c for c in checks if pred(str(getattr(c, "id")))]  # noqa: B009
    return chosen, [c for c in checks if c not in chosen]
