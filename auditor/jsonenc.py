"""The one JSON encoder of the tool: every report, every plugin metric and every ``--json`` output goes through it.

One policy for values JSON cannot hold: NaN, +inf and -inf become ``null`` (the file stays standard JSON, which
strict parsers such as browsers' ``JSON.parse`` and jq accept; a number that is not finite is not a measurement
a gate can pass on, and every gate on it already fails with a message saying so). numpy scalars and arrays
become Python numbers and lists, tuples and sets lists, enums their value, objects with ``to_dict()`` their dict.

Reports written before this policy stored non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``:
:func:`json_number` still reads them.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["NONFINITE", "dumps", "json_number", "jsonable", "number_or_none"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types (dict with string keys, list, str, int, float, bool, None) from ``obj``; non-finite
    floats are ``None``."""
    if isinstance(obj, Enum):  # before str/int: str- and int-valued enums are instances of those too
        return jsonable(obj.value)
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, PurePath):
        return str(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return str(obj)


def number_or_none(v: Any) -> float | None:
    """``v`` as a metric's float, ``None`` for a missing or undefined (NaN) one: a median of nothing, a rate
    with an empty denominator. The report would write ``null`` either way; this keeps it ``None`` in memory
    too (``audit()``'s results, gates)."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as JSON text under the tool's policy (never ``NaN``/``Infinity`` tokens)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def json_number(v: Any) -> float | None:
    """A value read back from a JSON report as a number: ints and floats, and the strings ``"nan"``, ``"inf"``,
    ``"-inf"`` that reports of earlier versions wrote for non-finite floats; ``None`` otherwise (``null``
    included). Booleans are flags, not numbers."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in NONFINITE:
        return NONFINITE[v]
    return None
