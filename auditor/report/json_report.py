"""``report.json``: the source of truth."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from auditor.report.base import Reporter


def jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy values, tuples, enums and non-finite floats (as strings, so that the file
    stays valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if hasattr(obj, "value") and isinstance(obj.value, str):
        return obj.value
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def json_number(v: Any) -> float | None:
    """A value read back from a JSON report as a number: ints, floats and the strings ``"nan"``, ``"inf"``,
    ``"-inf"`` that :func:`jsonable` writes for non-finite floats; ``None`` otherwise. Booleans are flags,
    not numbers."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in NONFINITE:
        return NONFINITE[v]
    return None


class JsonReporter(Reporter):
    """Writes the report dict as indented JSON."""

    format = "json"
    filename = "report.json"

    def render(self, report: dict[str, Any], pm: Any = None) -> str:
        """Indented JSON text."""
        return json.dumps(jsonable(report), indent=2, sort_keys=False) + "\n"
