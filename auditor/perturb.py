"""Which model input a perturbation check perturbs, what its values are, and how to perturb them validly.

Every perturbation check (noise, attacks, fooling, blind spots, cues) works on one declared model input, the
*primary* input (``model.input``; ``Dataset.x`` holds its data) and passes the model's other inputs through
unchanged. :func:`input_space` reads what kind of values that input holds:

``continuous``
    float inputs: perturbed as they are, within :attr:`InputSpace.bounds` when known.
``quantized``
    integer-valued pixels or bytes (``uint8``/``int8``/``uint16`` ... not feeding an embedding): perturbed in
    float and mapped back by rounding and clipping to the dtype's range (:meth:`InputSpace.snap`).
``ids``
    token or category ids (an integer input that indexes an embedding table, ``Gather``): arithmetic on them
    is meaningless, so checks either substitute ids within the vocabulary (:func:`substitute_ids`) or skip
    with a reason (:meth:`InputSpace.require_arithmetic`).

A check builds its perturbations in the float space ``to_space(x)`` and hands ``from_space(z)`` to the model.
A normalised image input with declared preprocessing (``data.preprocess``, :mod:`auditor.datasets.preprocess`)
is perturbed in un-normalised pixel space: ``to_space`` inverts the declared ``scale``/``mean``/``std`` to pixels
in ``[0, 1]`` and ``from_space`` normalises back (uint8 models: to the nearest of the 256 levels), so ``eps`` and
``sigma`` mean what they mean in the papers (8/255 is eight grey levels) whatever the normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from auditor import graph as G
from auditor.errors import SkipCheck
from auditor.rowrandom import RowRandom

if TYPE_CHECKING:
    from auditor.datasets.preprocess import PixelSpace


class ValueKind(str, Enum):
    """What the values of an input mean (see the module docstring)."""

    CONTINUOUS = "continuous"
    QUANTIZED = "quantized"
    IDS = "ids"


#: Ops through which an integer input keeps its meaning as ids on the way to an embedding look-up.
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}


@dataclass(frozen=True)
class InputSpace:
    """The value space of one model input.

    ``bounds`` are the valid values in the perturbation space (``None``: unbounded); ``vocab`` the number of
    valid ids (``ids`` inputs: 0 .. vocab-1; ``None`` when neither the graph nor the spec says); ``source``
    says where kind and bounds come from (for the report's notes).
    """

    name: str
    dtype: np.dtype
    kind: ValueKind
    bounds: tuple[float, float] | None = None
    vocab: int | None = None
    source: str = ""
    #: Declared image preprocessing (:class:`~auditor.datasets.preprocess.PixelSpace`): the space is then
    #: un-normalised pixels in ``[0, 1]``.
    pixels: PixelSpace | None = None

    @property
    def work_dtype(self) -> np.dtype:
        """The float dtype perturbations are built in (float64 inputs keep float64, all others float32)."""
        return np.dtype(np.float64) if self.dtype == np.float64 else np.dtype(np.float32)

    @property
    def channels(self) -> str | None:
        """Channel order of the input (``RGB``, ``BGR``, ``L``) where ``data.preprocess`` declares it, else
        ``None`` (not known: image galleries show three channels as RGB and say so)."""
        return None if self.pixels is None else self.pixels.channels

    def to_space(self, x: np.ndarray) -> np.ndarray:
        """Model values -> the float space perturbations are built in (pixels in [0, 1] for declared image
        preprocessing)."""
        if self.pixels is not None:
            return np.asarray(self.pixels.to_pixels(np.asarray(x))).astype(self.work_dtype, copy=False)
        return np.asarray(x).astype(self.work_dtype, copy=False)

    def snap(self, z: np.ndarray) -> np.ndarray:
        """Perturbed float values -> the nearest valid values, still in float (rounded and clipped to the
        dtype's range for quantized inputs; unchanged otherwise). In pixel space: clipped to [0, 1], and for
        integer models rounded to the nearest of the 256 levels."""
        if self.pixels is not None:
            out: np.ndarray = np.clip(z, 0.0, 1.0)
            if self.kind is ValueKind.QUANTIZED:
                out = np.rint(out * 255.0) / 255.0
            return out.astype(z.dtype, copy=False)
        if self.kind is ValueKind.CONTINUOUS:
            return z
        out = np.rint(z)
        if self.bounds is not None:
            np.clip(out, self.bounds[0], self.bounds[1], out=out)
        return out

    def from_space(self, z: np.ndarray) -> np.ndarray:
        """Float values -> what the model is fed (snapped, in the input's dtype; normalised again in pixel
        space)."""
        if self.pixels is not None:
            return np.asarray(self.pixels.from_pixels(self.snap(np.asarray(z)))).astype(self.dtype, copy=False)
        return np.asarray(self.snap(np.asarray(z))).astype(self.dtype, copy=False)

    def require_arithmetic(self, what: str) -> None:
        """Skip the check when the input holds ids, which ``what`` (e.g. "Gaussian noise") cannot perturb."""
        if self.kind is ValueKind.IDS:
            vocab = f", vocabulary of {self.vocab}" if self.vocab else ""
            raise SkipCheck(f"model input '{self.name}' holds integer ids ({self.dtype}{vocab}): {what} would "
                            f"make invalid ids; ids are perturbed by substitution (robustness.noise kind: "
                            f"substitute)")

    def describe(self) -> str:
        """One line for the report."""
        text = f"input '{self.name}' ({self.dtype}, {self.kind.value}"
        if self.bounds is not None:
            text += f", values in [{self.bounds[0]:g}, {self.bounds[1]:g}]"
        if self.vocab is not None:
            text += f", {self.vocab} ids"
        text += (f"; {self.source}" if self.source else "") + ")"
        if self.pixels is not None:
            text += ": " + self.pixels.describe()
        return text


def embedding_vocab(graph: onnx.GraphProto, name: str) -> int | None:
    """Rows of the embedding table that integer input ``name`` indexes (``Gather(table, ids)`` directly or
    through casts and reshapes), ``None`` if it feeds no such look-up. Several tables: the smallest bounds
    the valid ids."""
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    cons = G.consumers(graph)
    sizes: list[int] = []
    todo, seen = [name], {name}
    while todo:
        t = todo.pop()
        for node, slot in cons.get(t, []):
            if node.op_type in _PASS_THROUGH and slot == 0:
                for o in node.output:
                    if o not in seen:
                        seen.add(o)
                        todo.append(o)
            elif node.op_type == "Gather" and slot == 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                table = node.input[0]
                dims: list[int] | None = None
                if table in inits:
                    dims = list(inits[table].dims)
                elif table in consts:
                    val = next((a.t for a in consts[table].attribute if a.name == "value"), None)
                    dims = list(val.dims) if val is not None else None
                if dims:
                    sizes.append(int(dims[axis if axis >= 0 else axis + len(dims)]))
            elif node.op_type == "OneHot" and slot == 0:
                depth = node.input[1] if len(node.input) > 1 else ""
                if depth in inits:
                    sizes.append(int(onnx.numpy_helper.to_array(inits[depth]).reshape(-1)[0]))
    return min(sizes) if sizes else None


def input_space(model: Any, data_x: Any = None, *, name: str | None = None,
                declared: Mapping[str, Any] | None = None, pixels: PixelSpace | None = None) -> InputSpace:
    """The value space of ``model``'s input ``name`` (default: the primary input, ``model.input``).

    ``data_x`` (the audit data for that input) supplies the dtype when the graph leaves it open; ``declared``
    (default: the model's config) may give ``vocab_size``, the number of valid ids, for an integer input whose
    embedding table the graph does not show. ``pixels`` (``Dataset.pixels``: the data's declared image
    preprocessing) makes a float or small-integer primary input's space un-normalised pixels in ``[0, 1]``.
    """
    space = _input_space(model, data_x, name=name, declared=declared)
    if pixels is not None and (name is None or name == model.input.name) and space.kind is not ValueKind.IDS:
        import dataclasses

        return dataclasses.replace(space, bounds=(0.0, 1.0), pixels=pixels,
                                   source="un-normalised pixels, from the declared data.preprocess")
    return space


def _input_space(model: Any, data_x: Any = None, *, name: str | None = None,
                 declared: Mapping[str, Any] | None = None) -> InputSpace:
    spec = model.input if name is None or name == model.input.name else G.value_info_spec(
        next(i for i in model.proto.graph.input if i.name == name))
    # the data's dtype without reading it (a lazy source of decoded images knows its dtype)
    data_dtype = getattr(data_x, "dtype", None) if data_x is not None else None
    if data_x is not None and data_dtype is None:
        data_dtype = np.asarray(data_x).dtype
    dtype = spec.dtype or (np.dtype(data_dtype) if data_dtype is not None else np.dtype(np.float32))
    if dtype.kind == "f":
        return InputSpace(spec.name, dtype, ValueKind.CONTINUOUS)
    vocab_decl = (declared or {}).get("vocab_size")
    if vocab_decl is None:
        vocab_decl = getattr(getattr(model, "config", None), "vocab_size", None)
    vocab = embedding_vocab(model.proto.graph, spec.name)
    if vocab is not None or vocab_decl is not None:
        source = "vocabulary from the embedding table it indexes" if vocab is not None else \
            "vocabulary from model.vocab_size"
        v = int(vocab_decl) if vocab_decl is not None else int(vocab)  # type: ignore[arg-type]
        return InputSpace(spec.name, dtype, ValueKind.IDS, (0.0, float(v - 1)), v, source)
    if dtype.kind == "b":
        return InputSpace(spec.name, dtype, ValueKind.IDS, (0.0, 1.0), 2, "a boolean input")
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        return InputSpace(spec.name, dtype, ValueKind.QUANTIZED, (float(info.min), float(info.max)),
                          source=f"integer values, rounded and clipped to the {dtype} range")
    # a wide integer input that indexes nothing the graph shows: ids of unknown range
    return InputSpace(spec.name, dtype, ValueKind.IDS, source="a wide integer input (set model.vocab_size for "
                      "the number of valid ids)")


def substitute_ids(x: np.ndarray, rate: float, rng: np.random.Generator | RowRandom, vocab: int,
                   mask_id: int | None = None) -> np.ndarray:
    """Replace each id of ``x`` with probability ``rate`` by a different id drawn uniformly from
    ``0 .. vocab-1`` (or by ``mask_id`` when given): a perturbation that stays inside the vocabulary."""
    if vocab < 2:
        raise ValueError("substitution needs a vocabulary of at least two ids")
    x = np.asarray(x)
    hit = rng.random(x.shape) < rate
    if mask_id is not None:
        return np.where(hit, np.asarray(mask_id, dtype=x.dtype), x)
    draw = rng.integers(0, vocab - 1, size=x.shape)
    # uniform over the vocab minus the current id: shift the draws at or above it by one
    other = draw + (draw >= x)
    return np.where(hit, other.astype(x.dtype), x)
