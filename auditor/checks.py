"""The check contract: a check declares its parameters and needs once, and implements ``run``.

One declaration gives validation (``auditor run``), documentation (``auditor checks``) and the JSON Schema
(``auditor schema``), the way tox's ``add_config`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from auditor.context import AuditContext
    from auditor.results import CheckResult

_JSON_TYPES = {"number", "integer", "string", "boolean", "array", "object", "null"}


class Need(str, Enum):
    """What a check needs besides the model. The runner fails the spec up front (labels, groups, reference,
    train data) or skips the check with a reason (gradients: no differentiable backend installed)."""

    DATA = "data"
    LABELS = "labels"
    GROUPS = "groups"
    GRADIENTS = "gradients"
    REFERENCE = "reference"
    TRAIN_DATA = "train_data"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Param:
    """A typed check parameter with a default and a description.

    ``type`` is a JSON Schema type name or a tuple of them (``("number", "array")`` for "a number or a list").
    ``items`` is the JSON type of list items; ``choices`` an enumeration; ``minimum``/``maximum`` bounds for
    numbers (and for list items of numbers). ``schema`` overrides everything with a full JSON Schema fragment.
    """

    name: str
    type: str | tuple[str, ...]
    default: Any
    description: str
    choices: Sequence[Any] | None = None
    items: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        types = (self.type,) if isinstance(self.type, str) else tuple(self.type)
        bad = [t for t in types if t not in _JSON_TYPES and t != "any"]
        if bad:
            raise ValueError(f"Param {self.name!r}: unknown type(s) {bad}")

    def json_schema(self) -> dict[str, Any]:
        """This parameter as a JSON Schema fragment."""
        if self.schema is not None:
            out = dict(self.schema)
        else:
            types = [self.type] if isinstance(self.type, str) else list(self.type)
            out = {}
            if "any" not in types:
                if self.nullable:
                    types.append("null")
                out["type"] = types[0] if len(types) == 1 else types
            if self.choices is not None:
                out["enum"] = list(self.choices) + ([None] if self.nullable else [])
            bounds = {}
            if self.minimum is not None:
                bounds["minimum"] = self.minimum
            if self.maximum is not None:
                bounds["maximum"] = self.maximum
            if "number" in types or "integer" in types:
                out.update(bounds)
            if "array" in types and (self.items or bounds):
                item: dict[str, Any] = {"type": self.items} if self.items else {}
                if self.items in ("number", "integer"):
                    item.update(bounds)
                out["items"] = item
        out.setdefault("description", self.description)
        if self.default is not None:
            out.setdefault("default", self.default)
        return out

    def type_label(self) -> str:
        """A short human-readable type for ``auditor checks``."""
        types = [self.type] if isinstance(self.type, str) else list(self.type)
        label = " | ".join(f"list[{self.items}]" if t == "array" and self.items else t for t in types)
        if self.choices is not None:
            label += " {" + ", ".join(map(str, self.choices)) + "}"
        return label + (" | null" if self.nullable else "")


class Check:
    """Base class of every check. Subclass it, set the class attributes, implement :meth:`run`.

    ``name`` is ``"<plugin>.<check>"`` (a contract: specs refer to it with ``use:``). ``params`` declares
    the parameters (see :class:`Param`); ``needs`` what the check requires (see :class:`Need`);
    ``metrics_doc`` names and explains the metrics it reports (gates may bound any of them).

    ``run`` receives an :class:`~auditor.context.AuditContext` and returns a
    :class:`~auditor.results.CheckResult`. It may raise :class:`~auditor.errors.SkipCheck`; any other
    exception becomes status ``error`` for this check while the other checks still run.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[Sequence[Param]] = ()
    needs: ClassVar[frozenset[Need]] = frozenset({Need.DATA})
    metrics_doc: ClassVar[dict[str, str]] = {}
    #: Whether the runner should also run this check on the ``baseline:`` model (for delta gates).
    run_on_baseline: ClassVar[bool] = True

    def run(self, ctx: AuditContext) -> CheckResult:
        """Run the check. Override this."""
        raise NotImplementedError

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default value of every declared parameter."""
        return {p.name: p.default for p in cls.params}

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        """JSON Schema of the ``with:`` mapping of this check."""
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in cls.params},
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class CheckInfo:
    """A registered check class and where it came from (plugin name, distribution, version)."""

    cls: type[Check]
    plugin: str
    distribution: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The check's ``use:`` name."""
        return self.cls.name
