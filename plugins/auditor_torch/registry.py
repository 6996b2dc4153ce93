"""The op registry of the ONNX-to-torch interpreter. Importing this module does not import torch, so that
other plugins can register ops (``auditor_torch.register_op``) whether or not torch is installed.

An op implementation is ``fn(ctx, inputs) -> tensor | sequence of tensors``: ``ctx`` is an
:class:`auditor_torch.interpreter.NodeContext` (node, attributes, opset, the module), ``inputs`` the node's
input tensors in order (``None`` for an omitted optional input). Outputs are matched to the node's outputs in
order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

OpFn = Callable[[Any, list[Any]], Any]
_F = TypeVar("_F", bound=OpFn)

# (domain, op_type) -> implementation; "" is the default ONNX domain (also written "ai.onnx").
_OPS: dict[tuple[str, str], OpFn] = {}


class UnsupportedOpError(ValueError):
    """The graph uses ops (or op modes) the interpreter has no implementation for; the message lists them."""


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_op(op_type: str, domain: str = "", *, replace: bool = False) -> Callable[[_F], _F]:
    """Decorator registering ``fn`` as the torch implementation of ``op_type`` in ``domain``.

    A second registration of the same op raises ``ValueError`` unless ``replace=True`` (so that two plugins
    silently overriding each other cannot happen).
    """

    def deco(fn: _F) -> _F:
        key = (_norm_domain(domain), op_type)
        if key in _OPS and not replace and _OPS[key] is not fn:
            raise ValueError(f"op {domain or 'ai.onnx'}::{op_type} is already registered")
        _OPS[key] = fn
        return fn

    return deco


def lookup(op_type: str, domain: str = "") -> OpFn | None:
    """The implementation of an op, or ``None``."""
    return _OPS.get((_norm_domain(domain), op_type))


def supported_ops() -> list[str]:
    """``domain::op`` names of every registered op (``ai.onnx`` for the default domain)."""
    return sorted(f"{d or 'ai.onnx'}::{o}" for d, o in _OPS)
