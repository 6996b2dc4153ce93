"""The check contract: a check declares its parameters and needs once, and implements ``run``.

One declaration gives validation (``auditor run``), documentation (``auditor checks``) and the JSON Schema
(``auditor schema``), the way tox's ``add_config`` does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from auditor.params import NoParams, build, declared, is_params_class

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
    """One declared check parameter, as read from a check's ``Params`` (what ``auditor checks`` lists and the
    spec's JSON Schema is built from); checks declare parameters with :func:`auditor.param`, not with this.

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

    ``name`` is ``"<plugin>.<check>"`` (a contract: specs refer to it with ``use:``). ``Params`` declares the
    parameters as fields made with :func:`auditor.param` (a nested ``class Params:`` is made a frozen dataclass
    automatically; a module-level one is decorated with ``@dataclass(frozen=True)``); ``needs`` what the check
    requires (see :class:`Need`); ``metrics_doc`` names and explains the metrics it reports (gates may bound
    any of them, and a gate on any other name is a spec error). A key ending in ``.*`` (``per_class_recall.*``)
    declares a map whose keys are only known at run time.

    ``run`` receives an :class:`~auditor.context.AuditContext` and an instance of ``Params`` (``NoParams()``
    for a check without parameters) and returns a :class:`~auditor.results.CheckResult`. It may raise
    :class:`~auditor.errors.SkipCheck`; any other exception becomes status ``error`` for this check while the
    other checks still run.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[Any]] = NoParams
    needs: ClassVar[frozenset[Need]] = frozenset({Need.DATA})
    metrics_doc: ClassVar[dict[str, str]] = {}
    #: Whether the runner should also run this check on the ``baseline:`` model (for delta gates).
    run_on_baseline: ClassVar[bool] = True

    def run(self, ctx: AuditContext, params: Any) -> CheckResult:
        """Run the check with its typed parameters (an instance of ``Params``). Override this."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("Params")
        # A nested ``class Params:`` is made a frozen dataclass here, so that plugins need no decorator.
        if isinstance(own, type) and not dataclasses.is_dataclass(own):
            dataclasses.dataclass(frozen=True)(own)

    @classmethod
    def takes_params(cls) -> bool:
        """Whether ``run`` takes the typed parameters (``run(ctx, params)``) rather than only ``ctx``."""
        import inspect

        try:
            sig = inspect.signature(cls.run)
        except (TypeError, ValueError):
            return True
        pos = [p for p in sig.parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        return len(pos) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in pos)

    @classmethod
    def declared_params(cls) -> list[Param]:
        """Every parameter, from ``Params``."""
        cached = cls.__dict__.get("_declared_cache")
        if cached is None or cached[0] is not cls.Params:
            cached = (cls.Params, declared(cls.Params))
            cls._declared_cache = cached  # type: ignore[attr-defined]
        return list(cached[1])

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default value of every declared parameter."""
        return {p.name: p.default for p in cls.declared_params()}

    @classmethod
    def build_params(cls, values: dict[str, Any]) -> Any:
        """The typed parameters for a validated ``with:`` mapping."""
        return build(cls.Params, values)

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        """JSON Schema of the ``with:`` mapping of this check."""
        return {
            "type": "object",
            "properties": {p.name: p.json_schema() for p in cls.declared_params()},
            "additionalProperties": False,
        }

    @classmethod
    def metric_names(cls) -> list[str]:
        """The declared metric names (``metrics_doc`` keys; ``name.*`` patterns included)."""
        return list(cls.metrics_doc)


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


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_class_problems(cls: Any) -> list[str]:
    """What is wrong with a registered check class (empty when it is usable).

    A check must be a :class:`Check` subclass named ``"<plugin>.<check>"`` with a description (or
    docstring), a ``Params`` dataclass whose defaults satisfy their own declaration, ``run(self, ctx, params)``,
    ``needs`` made of :class:`Need`, and (when it declares parameters) declared metrics.
    """
    if not (isinstance(cls, type) and issubclass(cls, Check)):
        return [f"{cls!r} is not a Check subclass"]
    name = cls.name or ""
    if not _NAME.match(name):
        return [f"{cls.__qualname__}: name {name!r} is not of the form 'plugin.check'"]
    out: list[str] = []
    if not (cls.description or (cls.__doc__ or "").strip()):
        out.append(f"{name}: no description or docstring")
    if not all(isinstance(n, Need) for n in cls.needs):
        out.append(f"{name}: needs must be Need members, got {sorted(map(str, cls.needs))}")
    if isinstance(cls.__dict__.get("params"), (list, tuple)):
        out.append(f"{name}: declares 'params = [Param(...)]', which is no longer read: declare a 'class Params:' "
                   "of auditor.param fields (docs/plugin-authoring.md)")
    if not is_params_class(cls.Params):
        return [*out, f"{name}: Params must be a dataclass"]
    if not cls.takes_params():
        what = "declares Params but run() does not take them" if cls.Params is not NoParams else \
            "run() does not take the parameters"
        out.append(f"{name}: {what} (run(self, ctx, params))")
    if cls.Params is not NoParams and not cls.metrics_doc:
        out.append(f"{name}: declares no metrics (metrics_doc)")
    try:
        declared_list = cls.declared_params()
    except (TypeError, NameError) as exc:
        return [*out, f"{name}: bad Params declaration: {exc}"]
    from jsonschema import Draft202012Validator

    for p in declared_list:
        if p.default is None and p.nullable:
            continue
        schema = {k: v for k, v in p.json_schema().items() if k != "default"}
        for err in Draft202012Validator(schema).iter_errors(p.default):
            out.append(f"{name}: default of parameter '{p.name}' ({p.default!r}) is invalid: {err.message}")
    if not out:
        # Every field has a default; validate() may still ask the spec for something (a "one of" rule).
        try:
            cls.Params()
        except Exception as exc:
            return [f"{name}: Params() fails: {type(exc).__name__}: {exc}"]
    return out
