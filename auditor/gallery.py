"""Example galleries: the few inputs a check shows a person in the HTML report (an adversarial example beside its
original and their difference, an input evolved to fool the model, an input moved most of the way to another
class's without the model noticing), with the classes the model predicts for them.

A gallery is part of a check's result (:attr:`auditor.CheckResult.gallery`) and of report.json (the check's
``gallery`` key), next to the metrics and never inside them: gates, ``auditor diff``, SARIF and
``to_frame()`` read metrics only, so a gallery changes none of them. It is small by construction:

- at most :data:`MAX_EXAMPLES` examples and :data:`MAX_PANELS` images per example;
- each image is 8-bit grey or RGB PNG (written here with :mod:`zlib`, no imaging library), at most
  :data:`MAX_SIDE` pixels a side: larger inputs are shown downsampled by an integer factor (the mean of each
  block; rows and columns past the last whole block are left out), said in the gallery's notes;
- at most :data:`MAX_GALLERY_BYTES` of PNG per gallery (the builders drop examples from the end to fit; a
  plugin's own gallery above it makes that check's result malformed).

Values are shown on one scale per gallery: ``value_range`` ``[lo, hi]`` maps to 0..255 (the attack's valid
range, pixels in [0, 1] for declared preprocessing, else the shown values' own span). A difference panel is
signed and amplified per example: grey 128 is "unchanged", ``128 ± 127·δ/s`` with ``s`` the example's
``difference_scale`` (its largest ``|δ|`` after downsampling).

Colours are true: a batch is shown in RGB order whatever the model's (the builders' ``channels``, read from the
declared ``data.preprocess``; BGR is reversed, ``L`` is grey); three channels of undeclared order are shown as
R, G, B and the notes say so.

Which examples: the builders take their inputs in the order given, and checks give them in sample order (the
first ``k`` successful attacks by row of the plan), so the same spec gives the same gallery on one machine and
on a Ray cluster, whatever the shards.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Most examples in one gallery.
MAX_EXAMPLES = 8
#: Most images (panels) per example.
MAX_PANELS = 4
#: Largest side of a gallery image in pixels (larger inputs are downsampled).
MAX_SIDE = 64
#: Most PNG bytes in one gallery (before base64 in report.json).
MAX_GALLERY_BYTES = 512 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Per-example integers (classes, rows) and numbers (confidences, norms): lists or 1-D arrays.
Ints = Sequence[int] | np.ndarray
Floats = Sequence[float] | np.ndarray


# ------------------------------------------------------------------------------------------------- types
@dataclass(frozen=True, kw_only=True)
class Example:
    """One example of a gallery.

    ``images`` maps a panel name (``original``, ``perturbed``, ``difference``, ``evolved`` ...) to PNG bytes
    (base64 in JSON); ``predicted`` and ``confidence`` give the model's top class and its probability for a
    panel where it was run. ``label`` is the class the example is about (the true class of an attacked
    sample, the class an input was evolved for), ``row`` the audit data's row (``None``: a synthetic input),
    ``values`` numbers about it (``difference_scale``, perturbation norms).
    """

    images: dict[str, bytes]
    predicted: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    row: int | None = None
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (images as base64 text)."""
        out: dict[str, Any] = {"images": {k: base64.b64encode(v).decode("ascii") for k, v in self.images.items()},
                               "predicted": dict(self.predicted), "confidence": dict(self.confidence)}
        if self.label is not None:
            out["label"] = self.label
        if self.row is not None:
            out["row"] = self.row
        if self.values:
            out["values"] = dict(self.values)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Example:
        """An example from its JSON form."""
        row = doc.get("row")
        return cls(images={str(k): base64.b64decode(str(v)) for k, v in (doc.get("images") or {}).items()},
                   predicted={str(k): str(v) for k, v in (doc.get("predicted") or {}).items()},
                   confidence={str(k): float(v) for k, v in (doc.get("confidence") or {}).items()
                               if isinstance(v, (int, float))},
                   label=None if doc.get("label") is None else str(doc["label"]),
                   row=int(row) if isinstance(row, int) else None,
                   values={str(k): float(v) for k, v in (doc.get("values") or {}).items()
                           if isinstance(v, (int, float))})


@dataclass(frozen=True, kw_only=True)
class Gallery:
    """A check's examples for the report: ``kind`` (``adversarial``, ``fooling``), a ``title``, the examples
    shown, ``total`` (how many there were to choose from), the ``value_range`` mapped to 0..255, and notes
    on how the images were made."""

    kind: str
    title: str
    examples: list[Example]
    total: int
    value_range: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """PNG bytes of all images."""
        return sum(len(b) for e in self.examples for b in e.images.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the check's ``gallery`` key in report.json)."""
        out: dict[str, Any] = {"kind": self.kind, "title": self.title, "total": self.total,
                               "examples": [e.to_dict() for e in self.examples], "notes": list(self.notes)}
        if self.value_range is not None:
            out["value_range"] = [float(self.value_range[0]), float(self.value_range[1])]
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Gallery:
        """A gallery from its JSON form."""
        vr = doc.get("value_range")
        return cls(kind=str(doc.get("kind", "")), title=str(doc.get("title", "")),
                   examples=[Example.from_dict(e) for e in doc.get("examples") or []],
                   total=int(doc.get("total") or 0),
                   value_range=(float(vr[0]), float(vr[1])) if isinstance(vr, list) and len(vr) == 2 else None,
                   notes=[str(n) for n in doc.get("notes") or []])


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header; ``None`` when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def problems(g: Any) -> list[str]:
    """What is wrong with a plugin's gallery (empty: nothing): its type, the caps, images that are not PNG."""
    if not isinstance(g, Gallery):
        return [f"gallery is a {type(g).__name__}, not an auditor.gallery.Gallery"]
    out = []
    if len(g.examples) > MAX_EXAMPLES:
        out.append(f"gallery has {len(g.examples)} examples (at most {MAX_EXAMPLES})")
    for i, e in enumerate(g.examples):
        if not isinstance(e, Example):
            out.append(f"gallery.examples[{i}] is a {type(e).__name__}, not an Example")
            continue
        if len(e.images) > MAX_PANELS:
            out.append(f"gallery.examples[{i}] has {len(e.images)} images (at most {MAX_PANELS})")
        for name, data in e.images.items():
            size = png_size(data) if isinstance(data, bytes) else None
            if size is None:
                out.append(f"gallery.examples[{i}].images.{name} is not a PNG")
            elif max(size) > MAX_SIDE:
                out.append(f"gallery.examples[{i}].images.{name} is {size[0]}x{size[1]} (at most {MAX_SIDE} a side)")
    if not out and g.nbytes > MAX_GALLERY_BYTES:
        out.append(f"gallery holds {g.nbytes} bytes of images (at most {MAX_GALLERY_BYTES})")
    return out


# ------------------------------------------------------------------------------------------------- images
def encode_png(img: np.ndarray) -> bytes:
    """An 8-bit PNG of ``img`` (``uint8``; ``(H, W)`` grey or ``(H, W, 3)`` RGB), deterministic bytes."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        color = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"a PNG image is (H, W) or (H, W, 3), not {img.shape}")
    h, w = img.shape[:2]
    # each scanline starts with its filter type (0: none); zlib finds the redundancy
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, -1)], axis=1).tobytes()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    return (_PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def downsample_factor(h: int, w: int) -> int:
    """The integer factor that brings the larger side to at most :data:`MAX_SIDE`."""
    return max(1, math.ceil(max(h, w) / MAX_SIDE))


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """``(N, C, H, W)`` -> the mean of each ``factor × factor`` block (float64); rows and columns past the last
    whole block are left out."""
    x = np.asarray(x, np.float64)
    if factor == 1:
        return x
    n, c, h, w = x.shape
    hh, ww = h // factor, w // factor
    x = x[:, :, :hh * factor, :ww * factor]
    return np.asarray(x.reshape(n, c, hh, factor, ww, factor).mean(axis=(3, 5)))


def to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(C, H, W)`` values with ``[lo, hi]`` mapped to 0..255 (rounded, clipped) -> ``(H, W, C)`` uint8."""
    span = hi - lo if hi > lo else 1.0
    u = np.clip(np.rint((np.asarray(x, np.float64) - lo) / span * 255.0), 0, 255)
    return np.transpose(u, (1, 2, 0)).astype(np.uint8)


def difference_uint8(d: np.ndarray) -> tuple[np.ndarray, float]:
    """``(C, H, W)`` signed differences -> ``(H, W, C)`` uint8 with 0 at grey 128 and ``±s`` at ``128 ± 127``,
    ``s`` the largest ``|d|`` (returned; 0 when nothing changed)."""
    d = np.asarray(d, np.float64)
    s = float(np.max(np.abs(d))) if d.size else 0.0
    u = np.full(d.shape, 128.0) if s == 0 else np.clip(np.rint(128.0 + 127.0 * d / s), 0, 255)
    return np.transpose(u, (1, 2, 0)).astype(np.uint8), s


def canonical_images(x: np.ndarray, layout: str | None, channels: str | None = None) -> np.ndarray | None:
    """A batch of model inputs as ``(N, C, H, W)`` for display, channels in RGB order (``channels="BGR"``:
    reversed); ``None`` when it is not a batch of grey or RGB images (feature rows, sequences, other channel
    counts, or a channel count that ``channels`` contradicts)."""
    x = np.asarray(x)
    if x.ndim != 4 or layout not in ("NCHW", "NHWC"):
        return None
    if layout == "NHWC":
        x = np.transpose(x, (0, 3, 1, 2))
    want = {"L": (1,), "RGB": (3,), "BGR": (3,)}.get(channels or "", (1, 3))
    if x.shape[1] not in want or min(x.shape[2:]) < 2:
        return None
    return x[:, ::-1] if channels == "BGR" else x


def _channel_note(c: int, channels: str | None) -> list[str]:
    if channels == "BGR":
        return ["channels reversed from the model's BGR order to RGB for display (data.preprocess.channels)"]
    if channels is None and c == 3:
        return ["channel order not declared (data.preprocess.channels): the three channels are shown as R, G, B"]
    return []


def class_names(model: Any, data: Any = None) -> list[str] | None:
    """Names of the model's output columns where the model (scikit-learn's ZipMap labels) or the data (an image
    folder's classes) says them; ``None``: the column indices are the names."""
    zipmaps = getattr(model, "zipmaps", None) or {}
    for z in zipmaps.values():
        if getattr(z, "classes", None):
            return [str(c) for c in z.classes]
    details = getattr(data, "details", None) or {}
    classes = details.get("classes") if isinstance(details, dict) else None
    if isinstance(classes, list) and classes:
        return [str(c) for c in classes]
    return None


def _name(column: int, names: Sequence[str] | None) -> str:
    return names[column] if names is not None and 0 <= column < len(names) else str(column)


def _shared_range(arrays: Sequence[np.ndarray], value_range: tuple[float, float] | None) -> tuple[float, float]:
    if value_range is not None and all(math.isfinite(v) for v in value_range) and value_range[1] > value_range[0]:
        return float(value_range[0]), float(value_range[1])
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(1)
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _fit(examples: list[Example]) -> list[Example]:
    """``examples`` without those at the end that would take the gallery past :data:`MAX_GALLERY_BYTES`."""
    out, total = [], 0
    for e in examples:
        total += sum(len(b) for b in e.images.values())
        if total > MAX_GALLERY_BYTES:
            break
        out.append(e)
    return out


def _resolution_note(h: int, w: int, factor: int) -> list[str]:
    if factor == 1:
        return []
    return [f"images downsampled {factor}x (the mean of each {factor}x{factor} block) from {h}x{w} to "
            f"{h // factor}x{w // factor}"]


@dataclass(frozen=True)
class _Rendered:
    """The PNG panels of ``k`` examples, the value range they share, and how they were made (notes)."""

    images: list[dict[str, bytes]]
    difference_scales: list[float]
    value_range: tuple[float, float]
    notes: list[str]


def _render(panels: Mapping[str, np.ndarray], *, layout: str | None, channels: str | None, k: int,
            value_range: tuple[float, float] | None, difference: tuple[str, str] | None = None) -> _Rendered | None:
    """The first ``k`` examples of each panel's batch (all of one shape, in ``layout`` and ``channels`` order) as
    PNGs on one value scale; ``difference=(a, b)`` adds a signed ``b - a`` panel. ``None``: not images."""
    k = min(int(k), MAX_EXAMPLES, *(len(v) for v in panels.values()))
    shown = {name: canonical_images(np.asarray(v)[:max(k, 0)], layout, channels) for name, v in panels.items()}
    if k <= 0 or any(v is None for v in shown.values()):
        return None
    first = next(iter(shown.values()))
    assert first is not None
    h, w = first.shape[2:]
    f = downsample_factor(h, w)
    small = {name: downsample(v, f) for name, v in shown.items() if v is not None}
    lo, hi = _shared_range(list(small.values()), value_range)
    images = [{name: encode_png(to_uint8(v[i], lo, hi)) for name, v in small.items()} for i in range(k)]
    scales = []
    if difference is not None:
        a, b = (np.asarray(shown[n], np.float64) for n in difference)
        ds = downsample(b - a, f)
        for i in range(k):
            img, scale = difference_uint8(ds[i])
            images[i]["difference"] = encode_png(img)
            scales.append(scale)
    return _Rendered(images, scales, (lo, hi), [*_channel_note(first.shape[1], channels), *_resolution_note(h, w, f)])


def _values(norms: Mapping[str, Floats] | None, i: int, **fixed: float) -> dict[str, float]:
    return {**fixed, **{name: float(v[i]) for name, v in (norms or {}).items()}}


# ------------------------------------------------------------------------------------------------- builders
def adversarial_gallery(x: np.ndarray, x_adv: np.ndarray, *, layout: str | None, labels: Ints,
                        predicted: Ints, confidence: Floats, predicted_adv: Ints,
                        confidence_adv: Floats, rows: Ints | None = None,
                        value_range: tuple[float, float] | None = None, classes: Sequence[str] | None = None,
                        total: int | None = None, k: int = 4, norms: Mapping[str, Floats] | None = None,
                        title: str = "adversarial examples", space: str = "",
                        channels: str | None = None) -> Gallery | None:
    """A gallery of the first ``k`` pairs (original ``x``, perturbed ``x_adv``; a batch in ``layout``, channels
    in ``channels`` order, e.g. :attr:`auditor.perturb.InputSpace.channels`): three panels each (original,
    perturbed, difference) with the predicted class (column index, named by ``classes``) and confidence under
    the first two, the true ``labels`` and data ``rows``. ``norms`` adds per-example numbers
    (``{"linf": [...]}``) to ``values``; ``space`` says what the values are (for the notes). ``None`` when the
    inputs are not grey or RGB images, or ``k`` is 0."""
    r = _render({"original": x, "perturbed": x_adv}, layout=layout, channels=channels, k=k,
                value_range=value_range, difference=("original", "perturbed"))
    if r is None:
        return None
    examples = [Example(
        images=imgs,
        predicted={"original": _name(int(predicted[i]), classes), "perturbed": _name(int(predicted_adv[i]), classes)},
        confidence={"original": float(confidence[i]), "perturbed": float(confidence_adv[i])},
        label=_name(int(labels[i]), classes), row=None if rows is None else int(rows[i]),
        values=_values(norms, i, difference_scale=r.difference_scales[i])) for i, imgs in enumerate(r.images)]
    lo, hi = r.value_range
    notes = [f"the first {len(examples)} successful examples in sample order; values in [{lo:.4g}, {hi:.4g}] shown "
             f"as 0..255" + (f" ({space})" if space else ""),
             "difference: grey 128 is unchanged, 128 ± 127·δ/difference_scale per example (amplified)", *r.notes]
    return Gallery(kind="adversarial", title=title, examples=_fit(examples),
                   total=len(x_adv) if total is None else int(total), value_range=r.value_range, notes=notes)


def input_gallery(x: np.ndarray, *, layout: str | None, predicted: Ints, confidence: Floats,
                  labels: Ints | None = None, panel: str = "input", k: int = 4,
                  value_range: tuple[float, float] | None = None, classes: Sequence[str] | None = None,
                  total: int | None = None, kind: str = "fooling", title: str = "fooling inputs",
                  notes: Sequence[str] = (), channels: str | None = None) -> Gallery | None:
    """A gallery of the first ``k`` inputs of ``x`` (one ``panel`` each: synthetic inputs such as fooling
    images) with the predicted class and confidence; ``labels``: the class each is about (e.g. the class it
    was evolved for). ``None`` when the inputs are not grey or RGB images, or ``k`` is 0."""
    r = _render({panel: x}, layout=layout, channels=channels, k=k, value_range=value_range)
    if r is None:
        return None
    examples = [Example(images=imgs, predicted={panel: _name(int(predicted[i]), classes)},
                        confidence={panel: float(confidence[i])},
                        label=None if labels is None else _name(int(labels[i]), classes))
                for i, imgs in enumerate(r.images)]
    lo, hi = r.value_range
    return Gallery(kind=kind, title=title, examples=_fit(examples), total=len(x) if total is None else int(total),
                   value_range=r.value_range,
                   notes=[*notes, f"values in [{lo:.4g}, {hi:.4g}] shown as 0..255", *r.notes])


def blind_spot_gallery(source: np.ndarray, reached: np.ndarray, target: np.ndarray, *, layout: str | None,
                       predicted: Mapping[str, Ints], confidence: Mapping[str, Floats], labels: Ints,
                       rows: Ints | None = None, values: Mapping[str, Floats] | None = None,
                       value_range: tuple[float, float] | None = None, classes: Sequence[str] | None = None,
                       total: int | None = None, k: int = 4, title: str = "blind spots", space: str = "",
                       channels: str | None = None) -> Gallery | None:
    """A gallery of the first ``k`` blind spots: for each, the ``source`` input (class ``labels``, data ``rows``),
    the point ``reached`` on the way to an input of another class while the model's answer held, and that
    ``target``; ``predicted`` / ``confidence`` map the panel names (``source``, ``reached``, ``target``) to the
    model's class and probability on them, ``values`` adds per-example numbers (``alpha``: the share of the
    way reached). ``None`` when the inputs are not grey or RGB images, or ``k`` is 0."""
    r = _render({"source": source, "reached": reached, "target": target}, layout=layout, channels=channels, k=k,
                value_range=value_range)
    if r is None:
        return None
    examples = [Example(images=imgs, predicted={n: _name(int(v[i]), classes) for n, v in predicted.items()},
                        confidence={n: float(v[i]) for n, v in confidence.items()},
                        label=_name(int(labels[i]), classes), row=None if rows is None else int(rows[i]),
                        values=_values(values, i)) for i, imgs in enumerate(r.images)]
    lo, hi = r.value_range
    notes = [f"the first {len(examples)} blind spots in pair order: the source, the point reached toward an input "
             f"of another class with the prediction and its confidence unchanged, and that input; values in "
             f"[{lo:.4g}, {hi:.4g}] shown as 0..255" + (f" ({space})" if space else ""), *r.notes]
    return Gallery(kind="blind_spots", title=title, examples=_fit(examples),
                   total=len(source) if total is None else int(total), value_range=r.value_range, notes=notes)
