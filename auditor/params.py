"""Typed check parameters: a frozen dataclass declares them once.

A check's ``Params`` is a frozen dataclass whose fields carry their description and bounds through
:func:`param`; the field's annotation is its type. From that one declaration come the JSON Schema of the
check's ``with:`` mapping (``auditor run`` validation, ``auditor schema``), the listing of ``auditor checks``,
and the instance the check's ``run(ctx, params)`` receives::

    @dataclass(frozen=True)
    class Params:
        kind: Literal["gaussian", "uniform"] = param("gaussian", "the noise")
        sigma: float | list[float] = param(0.1, "noise std (input units)", minimum=0)

        def validate(self) -> list[str]:          # optional: rules that span several parameters
            return ["sigma: must be positive"] if self.sigma == 0 else []

``validate`` returns problems as ``"<param>: <message>"``; the spec reports them with their YAML path
(``checks[2].with.sigma: ...``) and exits 2 before any model is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

_META_KEY = "auditor.param"
_SCALARS: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a check that takes none."""


def param(default: T, description: str, *, minimum: float | None = None, maximum: float | None = None,
          choices: Sequence[Any] | None = None, schema: dict[str, Any] | None = None) -> T:
    """A dataclass field for a check parameter: its default, a description, and optional bounds.

    ``minimum``/``maximum`` bound numbers (and the items of number lists); ``choices`` enumerates the allowed
    values (a ``Literal`` annotation does the same); ``schema`` replaces the derived JSON Schema fragment.
    A list or dict default is copied for every instance.
    """
    meta = {_META_KEY: {"description": description, "minimum": minimum, "maximum": maximum,
                        "choices": None if choices is None else list(choices), "schema": schema}}
    if isinstance(default, (list, dict, set)):
        return typing.cast(T, dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta))
    return dataclasses.field(default=default, metadata=meta)


def is_params_class(cls: Any) -> bool:
    """Whether ``cls`` is a dataclass usable as a check's ``Params``."""
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


def _split_union(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return list(typing.get_args(tp))
    return [tp]


def _json_of(tp: Any) -> tuple[list[str], str | None, list[Any] | None]:
    """JSON types, item type and choices of one (non-union) annotation."""
    if tp is Any:
        return ["any"], None, None
    if tp in _SCALARS:
        return [_SCALARS[tp]], None, None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        kinds = sorted({_SCALARS.get(type(a), "string") for a in args})
        return kinds, None, list(args)
    if origin in (list, tuple) or origin is Sequence or (isinstance(origin, type) and issubclass(origin, Sequence)
                                                         and origin is not str):
        item = next((a for a in args if a is not Ellipsis), Any)
        item_types, _, _ = _json_of(item) if len(_split_union(item)) == 1 else (["any"], None, None)
        return ["array"], None if item_types == ["any"] else item_types[0], None
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return ["object"], None, None
    if tp in (list, tuple):
        return ["array"], None, None
    raise TypeError(f"unsupported parameter type {tp!r} (use bool, int, float, str, Literal, list, dict, Any "
                    "or unions of them)")


def _hints(cls: type[Any]) -> dict[str, Any]:
    import sys

    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


def declared(cls: type[Any]) -> list[Any]:
    """The :class:`~auditor.checks.Param` records of a ``Params`` dataclass, in field order.

    Raises ``TypeError`` for a field without a default or with a type that has no JSON form.
    """
    from auditor.checks import Param

    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get(_META_KEY) or {})
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"parameter '{f.name}' has no default")
        if isinstance(default, tuple):  # its JSON (and YAML) form
            default = list(default)
        members = _split_union(hints[f.name])
        nullable = type(None) in members
        kinds: list[str] = []
        items: str | None = None
        choices = meta.get("choices")
        for m in members:
            if m is type(None):
                continue
            ks, it, ch = _json_of(m)
            kinds += [k for k in ks if k not in kinds]
            items = items or it
            if ch is not None:
                choices = (choices or []) + ch
        if "any" in kinds:
            kinds = ["any"]
        # An integer is a valid number: "number" alone already accepts it.
        if "number" in kinds and "integer" in kinds:
            kinds.remove("integer")
        out.append(Param(name=f.name, type=kinds[0] if len(kinds) == 1 else tuple(kinds), default=default,
                         description=meta.get("description") or "", choices=choices, items=items,
                         minimum=meta.get("minimum"), maximum=meta.get("maximum"), nullable=nullable,
                         schema=meta.get("schema")))
    return out


def _coerce(value: Any, tp: Any) -> Any:
    """YAML's value in the declared type: integers where a float is declared become floats, lists become
    tuples where a tuple is declared (the instance is frozen)."""
    members = [m for m in _split_union(tp) if m is not type(None)]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and float in members and int not in members:
        return float(value)
    if isinstance(value, list):
        for m in members:
            origin = typing.get_origin(m) or m
            if origin in (list, tuple) or origin is Sequence:
                args = [a for a in typing.get_args(m) if a is not Ellipsis]
                items = [_coerce(v, args[0]) for v in value] if len(args) == 1 else list(value)
                return tuple(items) if origin is tuple else items
    return value


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of the ``Params`` dataclass ``cls`` from a validated ``with:`` mapping (defaults filled in
    for keys that are absent)."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: _coerce(v, hints[k]) for k, v in values.items() if k in names}
    return cls(**kwargs)


def problems_of(instance: Any) -> list[str]:
    """What the instance's own ``validate()`` says is wrong (rules spanning several parameters)."""
    validate = getattr(instance, "validate", None)
    if validate is None:
        return []
    return [str(p) for p in (validate() or [])]
