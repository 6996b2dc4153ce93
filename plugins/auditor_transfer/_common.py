"""What the ``transfer`` checks share: picking references and layers, fitting the data to a reference model,
reading a layer's activations as vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import AuditContext, Dataset, ModelHandle, SkipCheck, param
from auditor.jsonenc import jsonable as jsonable  # the core's one encoder (NaN, inf -> None), for this plugin


def reference_param() -> Any:
    """The ``reference`` field of the checks here (``reference: str | None = reference_param()``)."""
    return param(None, "Name of the reference model to compare with (a key of references:, or 'reference'); null "
                 "compares with every reference; headline metrics are those of the first.")


def spatial_param() -> Any:
    """The ``spatial`` field of the checks here (``spatial: str = spatial_param()``)."""
    return param("flatten", "How a layer's per-sample tensor becomes a vector: 'flatten' (every unit, as Kornblith "
                 "et al.) or 'mean' (average over the spatial axes of 4-D NCHW tensors / the token axis of 3-D ones).",
                 choices=["flatten", "mean"])


def pick_references(ctx: AuditContext, name: str | None) -> dict[str, ModelHandle]:
    """The reference models to compare with (skips the check when the spec has none)."""
    if not ctx.references:
        raise SkipCheck("the spec has no reference: (or references:) model")
    if name is None:
        return dict(ctx.references)
    if name not in ctx.references:
        raise ValueError(f"reference '{name}' is not in the spec (references: {', '.join(ctx.references)})")
    return {name: ctx.references[name]}


def model_named(ctx: AuditContext, name: str) -> ModelHandle:
    """The model a check's per-model state calls ``name``: ``"model"`` (the audited one) or a reference."""
    return ctx.model if name == "model" else ctx.references[name]


def headlined(by_ref: dict[str, dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """A check's metrics from its per-reference ones: the first reference's at the top, all under
    ``by_reference`` (noting which reference the headline is when there are several)."""
    first = next(iter(by_ref))
    if len(by_ref) > 1:
        notes.append(f"headline metrics are for reference '{first}'")
    return {**by_ref[first], "by_reference": by_ref}


def data_for(data: Dataset, model: ModelHandle) -> Dataset:
    """The data shaped for ``model`` (a reference may use the other image layout); the same object if it
    already fits."""
    return data.fitted_to(model.input.shape, model.input.name, str(model.path))


def resolve_layers(model: ModelHandle, which: str | Sequence[str], max_layers: int) -> list[str]:
    """Tensor names for ``"penultimate"``, ``"all"`` (every activation-producing node, evenly subsampled to
    at most ``max_layers``, keeping the first and the last) or explicit tensor names."""
    if isinstance(which, str) and which in ("all", "every"):
        names = model.layer_names("every")
        if not names:
            raise ValueError(f"{model.path}: no activation-producing node found")
        if len(names) > max_layers:
            idx = np.unique(np.round(np.linspace(0, len(names) - 1, max_layers)).astype(int))
            names = [names[i] for i in idx]
        return names
    try:
        return model.layer_names(which)
    except ValueError as exc:
        if which == "penultimate":  # e.g. a tree ensemble: there is no representation before a linear head
            raise SkipCheck(f"{exc}: the model has no penultimate features; name tensors with `layers:`") from None
        raise


def forward(ctx: AuditContext, tensors: dict[str, list[str]], data: Dataset, spatial: str) -> dict[str, Any]:
    """One pass of every named model over ``data``: ``{"raw": {name: its raw audited outputs}, "features":
    {name: [its tensors as (n, d) vectors, in order]}}``."""
    out: dict[str, Any] = {"raw": {}, "features": {}}
    for name, every in tensors.items():
        ctx.check_cancelled()
        model = model_named(ctx, name)
        part = data_for(data, model)
        raw = model.run(part.x, list(dict.fromkeys([*model.outputs, *every])), inputs=ctx.companions(model, part))
        out["raw"][name] = {o: raw[o] for o in model.outputs if o in raw}
        out["features"][name] = [as_vectors(raw[t], data.n, spatial) for t in every]
    return out


def as_vectors(a: np.ndarray, n: int, spatial: str) -> np.ndarray:
    """A layer's activations as an (n, d) float64 matrix (``spatial``: see :func:`spatial_param`)."""
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] != n:
        raise ValueError(f"activation of shape {list(a.shape)} is not batch-first for {n} samples")
    if spatial == "mean" and a.ndim == 4:
        a = a.mean(axis=(2, 3))
    elif spatial == "mean" and a.ndim == 3:
        a = a.mean(axis=1)
    return np.asarray(a, dtype=np.float64).reshape(n, -1)
