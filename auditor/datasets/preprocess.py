"""``data.preprocess``: the image recipe declared in the spec (resize, center crop, scale, mean/std, channels,
layout, dtype, or a preset), validated with YAML paths, resolved against the model's input, and applied the
same way for every check.

Steps, in order (torchvision's ``Resize`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize`` conventions):

1. decode with Pillow and convert to ``RGB`` or ``L`` (``BGR`` is RGB with the channels reversed);
2. ``resize``: an integer resizes the shorter side to it (the longer side ``int(size * long / short)``),
   ``[h, w]`` resizes to exactly that; Pillow's filter (``interpolation``, default bilinear);
3. ``center_crop``: ``[h, w]`` around the centre (``top = round((H - h) / 2)``), zero-padded if larger;
4. ``scale``, then ``(x - mean) / std`` per channel, in float32;
5. ``layout`` NCHW or NHWC, then ``dtype``. A uint8 model gets the raw pixels (no scale, mean or std).

:class:`PixelSpace` is the inverse of step 4: perturbation checks work on un-normalised pixels in ``[0, 1]``
and normalise after, so that ``eps = 8/255`` means what it means in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Common recipes. Explicit keys next to ``preset`` override the preset's.
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm ImageNet evaluation
    "imagenet": {"resize": 256, "center_crop": 224, "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "channels": "RGB"},
    # Inception / TF-slim style: pixels to [-1, 1]
    "inception": {"resize": 342, "center_crop": 299, "scale": 1 / 255, "mean": [0.5, 0.5, 0.5],
                  "std": [0.5, 0.5, 0.5], "channels": "RGB"},
    # OpenAI CLIP image encoders
    "clip": {"resize": 224, "center_crop": 224, "interpolation": "bicubic", "scale": 1 / 255,
             "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
             "channels": "RGB"},
    # Caffe / Keras "caffe" mode: BGR, mean pixel subtracted in 0..255 units
    "caffe": {"resize": 256, "center_crop": 224, "scale": 1.0, "mean": [103.939, 116.779, 123.68],
              "std": [1.0, 1.0, 1.0], "channels": "BGR"},
    # pixels to [0, 1], nothing else
    "unit": {"scale": 1 / 255},
}
CHANNELS = ("RGB", "BGR", "L")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "float64", "uint8", "int8")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

_SIZE = {"oneOf": [{"type": "integer", "minimum": 1},
                   {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}]}
_PER_CHANNEL = {"oneOf": [{"type": "number"},
                          {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4}]}

#: JSON Schema of ``data.preprocess`` (the spec's schema embeds it).
PREPROCESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Image preprocessing, applied the same way for every check (image folders and manifests).",
    "properties": {
        "preset": {"enum": sorted(PRESETS), "description": "A common recipe; keys given beside it override it."},
        "resize": {**_SIZE, "description": "Shorter side (integer) or exact [h, w]. Default: cover the crop."},
        "center_crop": {**_SIZE, "description": "Crop [h, w] (or an integer for a square) around the centre. "
                        "Default: the model input's spatial size when it is fixed."},
        "interpolation": {"enum": list(INTERPOLATIONS), "default": "bilinear",
                          "description": "Pillow resampling filter of the resize."},
        "scale": {"type": "number", "exclusiveMinimum": 0,
                  "description": "Multiply pixels by this (1/255 maps 0..255 to 0..1). Default: 1/255 for "
                                 "float inputs, 1 for integer inputs."},
        "mean": {**_PER_CHANNEL, "description": "Per-channel mean subtracted after scale."},
        "std": {**_PER_CHANNEL, "description": "Per-channel std divided by after the mean (each > 0)."},
        "channels": {"enum": list(CHANNELS), "description": "Channel order (L: grey). Default: from the model."},
        "layout": {"enum": list(LAYOUTS), "description": "Layout of the model input. Default: from the model."},
        "dtype": {"enum": list(DTYPES), "description": "Element type handed to the model. Default: the model's."},
    },
}


def _pair(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _vec(v: Any) -> list[float] | None:
    if v is None:
        return None
    return [float(e) for e in (v if isinstance(v, list) else [v])]


def merged(raw: dict[str, Any]) -> dict[str, Any]:
    """The preset's keys overlaid with the explicitly given ones."""
    base = dict(PRESETS.get(str(raw.get("preset")), {})) if raw.get("preset") else {}
    base.update({k: v for k, v in raw.items() if k != "preset"})
    return base


def validate(raw: dict[str, Any], where: str) -> list[str]:
    """Cross-field rules the schema cannot state; each problem with its YAML path (``where`` = the block's)."""
    p = merged(raw)
    out: list[str] = []
    n_ch = 1 if p.get("channels") == "L" else 3 if p.get("channels") in ("RGB", "BGR") else None
    for key in ("mean", "std"):
        v = _vec(p.get(key))
        if v is None:
            continue
        if n_ch is not None and len(v) not in (1, n_ch):
            out.append(f"{where}.{key}: {len(v)} values but channels {p['channels']} has {n_ch} "
                       f"(give 1 or {n_ch})")
        if key == "std" and any(not s > 0 for s in v):
            out.append(f"{where}.std: every value must be > 0 (got {v})")
        if any(not math.isfinite(e) for e in v):
            out.append(f"{where}.{key}: values must be finite")
    m, s = _vec(p.get("mean")), _vec(p.get("std"))
    if m is not None and s is not None and 1 not in (len(m), len(s)) and len(m) != len(s):
        out.append(f"{where}.std: {len(s)} values but mean has {len(m)}")
    resize, crop = p.get("resize"), _pair(p.get("center_crop"))
    if crop is not None and isinstance(resize, list):
        if crop[0] > resize[0] or crop[1] > resize[1]:
            out.append(f"{where}.center_crop: {list(crop)} is larger than resize {resize}")
    elif crop is not None and isinstance(resize, int) and min(crop) > resize:
        out.append(f"{where}.center_crop: {list(crop)} is larger than the resized shorter side {resize}")
    if p.get("dtype") in ("uint8", "int8"):
        bad: list[str] = [k for k in ("mean", "std") if k in p and any(e != d for e in _vec(p[k]) or []
                                                             for d in [0.0 if k == "mean" else 1.0])]
        if "scale" in p and float(p["scale"]) != 1.0:
            bad.insert(0, "scale")
        if bad:
            out.append(f"{where}.dtype: {p['dtype']} inputs get raw pixels; {', '.join(bad)} would be rounded "
                       f"away (remove {', '.join(bad)}, or use a float dtype)")
    return out


@dataclass(frozen=True)
class Preprocess:
    """A resolved recipe (every field known)."""

    resize: int | tuple[int, int] | None
    center_crop: tuple[int, int] | None
    interpolation: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: str
    layout: str
    dtype: str

    @property
    def n_channels(self) -> int:
        """1 for grey, else 3."""
        return 1 if self.channels == "L" else 3

    @property
    def integer(self) -> bool:
        """Whether the model gets raw integer pixels."""
        return np.dtype(self.dtype).kind in "iu"

    def describe(self) -> dict[str, Any]:
        """The recipe as the report shows it."""
        return {"resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
                "center_crop": list(self.center_crop) if self.center_crop else None,
                "interpolation": self.interpolation, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "channels": self.channels, "layout": self.layout, "dtype": self.dtype}

    def sample_shape(self, h: int, w: int) -> tuple[int, ...]:
        """Per-sample shape of the model input for output images of ``h`` x ``w``."""
        c = self.n_channels
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    # ---------------------------------------------------------------------------------------- pixels
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step (torchvision's rule for a shorter-side size)."""
        r = self.resize
        if r is None:
            if self.center_crop is None:
                return width, height
            # cover the crop while keeping the aspect ratio
            ch, cw = self.center_crop
            f = max(ch / height, cw / width)
            return max(cw, round(width * f)), max(ch, round(height * f))
        if isinstance(r, tuple):
            return r[1], r[0]
        if width <= height:
            return r, int(r * height / width)
        return int(r * width / height), r

    def decode(self, path: Any) -> np.ndarray:
        """One file -> ``(H, W, C)`` uint8 after channels, resize and crop (raises on unreadable files)."""
        from PIL import Image

        with Image.open(path) as opened:
            im = opened.convert("L" if self.channels == "L" else "RGB")
            size = self.resized_size(*im.size)
            if size != im.size:
                im = im.resize(size, _resample(self.interpolation))
            arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.channels == "BGR":
            arr = arr[:, :, ::-1]
        if self.center_crop is not None:
            arr = center_crop(arr, self.center_crop)
        return arr

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """A batch ``(N, H, W, C)`` of uint8 pixels -> model input (scale, mean/std, layout, dtype)."""
        # The layout is fixed on the uint8 pixels (a quarter of the bytes), then one float32 copy is made and
        # normalised in place: the same element-wise operations as normalising first, without a second copy.
        nchw = self.layout == "NCHW"
        src = np.transpose(pixels, (0, 3, 1, 2)) if nchw else pixels
        if self.integer:
            return np.ascontiguousarray(src, dtype=self.dtype)
        x = src.astype(np.float32, order="C")
        shape = (1, -1, 1, 1) if nchw else (1, 1, 1, -1)
        x *= np.float32(self.scale)
        x -= np.asarray(self.mean, np.float32).reshape(shape)
        x /= np.asarray(self.std, np.float32).reshape(shape)
        return x if self.dtype == "float32" else x.astype(self.dtype)

    def pixels(self) -> PixelSpace:
        """The map between model inputs and un-normalised pixels in ``[0, 1]``."""
        return PixelSpace(scale=self.scale, mean=self.mean, std=self.std, layout=self.layout, dtype=self.dtype,
                          n_channels=self.n_channels, channels=self.channels)


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` -> ``(h, w, C)`` around the centre; zero-padded first when smaller (torchvision)."""
    h, w = size
    H, W = arr.shape[:2]
    if h > H or w > W:
        ph, pw = max(h - H, 0), max(w - W, 0)
        arr = np.pad(arr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        H, W = arr.shape[:2]
    top, left = round((H - h) / 2.0), round((W - w) / 2.0)
    return arr[top:top + h, left:left + w]


def _resample(name: str) -> Any:
    from PIL import Image

    return getattr(Image.Resampling, name.upper())


@dataclass(frozen=True)
class PixelSpace:
    """Model input <-> un-normalised pixels in ``[0, 1]`` (``p = raw / 255``).

    ``x = (255 * scale * p - mean) / std`` per channel; uint8 models have ``scale = 1``, no mean or std, and
    get rounded pixels back. ``layout`` (``NCHW`` / ``NHWC``) is where the channel axis of the model input is,
    ``channels`` the order along it (``RGB``, ``BGR`` or ``L``): pixels keep the model's order, so whoever shows
    them as an image (:mod:`auditor.gallery`) reverses ``BGR`` to RGB.
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str
    dtype: str
    n_channels: int
    channels: str = "RGB"

    def _shape(self, ndim: int, canonical: bool) -> tuple[int, ...]:
        # per-channel constants broadcast along the channel axis: NCHW (or canonical) axis 1, NHWC the last
        shape = [1] * ndim
        shape[1 if canonical or self.layout == "NCHW" else ndim - 1] = -1
        return tuple(shape)

    def _consts(self, ndim: int, canonical: bool) -> tuple[np.ndarray, np.ndarray]:
        s = self._shape(ndim, canonical)
        mean = np.broadcast_to(np.asarray(self.mean, np.float64), (self.n_channels,)).reshape(s)
        std = np.broadcast_to(np.asarray(self.std, np.float64), (self.n_channels,)).reshape(s)
        return mean, std

    def to_pixels(self, x: np.ndarray, *, canonical: bool = False) -> np.ndarray:
        """Model inputs (or canonical NCHW ones) -> pixels in [0, 1] (float of ``x``'s precision or float32)."""
        mean, std = self._consts(x.ndim, canonical)
        out: np.ndarray = np.array(x, np.float64)  # one float64 copy, transformed in place
        out *= std
        out += mean
        out /= 255.0 * self.scale
        return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def from_pixels(self, p: np.ndarray, *, canonical: bool = False) -> np.ndarray:
        """Pixels in [0, 1] -> model inputs (uint8 models: rounded and clipped to 0..255)."""
        mean, std = self._consts(p.ndim, canonical)
        x: np.ndarray = np.array(p, np.float64)
        x *= 255.0 * self.scale
        x -= mean
        x /= std
        if np.dtype(self.dtype).kind in "iu":
            info = np.iinfo(np.dtype(self.dtype))
            return np.asarray(np.clip(np.rint(x), info.min, info.max), dtype=np.dtype(self.dtype))
        return x.astype(np.dtype(self.dtype))

    def describe(self) -> str:
        """One line for the report."""
        return ("perturbations are applied to un-normalised pixels in [0, 1] (eps and sigma in units of the "
                "full pixel range, as in the papers) and normalised after with the declared preprocessing")


def resolve(raw: dict[str, Any] | None, input_shape: Sequence[Any] | None, input_dtype: np.dtype[Any] | None,
            model_layout: str | None, *, images: bool = True) -> tuple[Preprocess, list[str]]:
    """The recipe for a model input: declared keys, else the preset's, else what the input's shape and dtype
    say; notes say what was inferred. ``images=False`` (arrays of pixels): no resize or crop. A recipe the model
    input contradicts raises ``ValueError("key: why")``."""
    p = merged(raw or {})
    notes: list[str] = []
    shape = list(input_shape or [])
    layout = p.get("layout") or (model_layout if model_layout in LAYOUTS else None)
    if layout is None:
        layout = "NCHW"
        if len(shape) == 4:
            notes.append("preprocess.layout inferred as NCHW")
    c = h = w = None
    if len(shape) == 4:
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    channels = p.get("channels") or ("L" if c == 1 else "RGB")
    if "dtype" in p:
        dtype = str(p["dtype"])
    elif input_dtype is not None and np.dtype(input_dtype).name in DTYPES:
        dtype = np.dtype(input_dtype).name
    else:
        dtype = "float32"
    crop = _pair(p.get("center_crop"))
    if not images:
        for key in ("resize", "center_crop"):
            if p.get(key) is not None:
                raise ValueError(f"{key}: needs image files (a folder or a manifest); arrays are used as stored")
    elif crop is None and isinstance(h, int) and isinstance(w, int):
        crop = (h, w)
        notes.append(f"preprocess.center_crop {h}x{w} inferred from the model input")
    elif crop is not None and isinstance(h, int) and isinstance(w, int) and crop != (h, w):
        raise ValueError(f"center_crop: {list(crop)} does not match the model input's {h}x{w}")
    resize = p.get("resize")
    resize = tuple(resize) if isinstance(resize, list) else resize
    integer = np.dtype(dtype).kind in "iu"
    scale = float(p.get("scale", 1.0 if integer else 1 / 255))
    n_ch = 1 if channels == "L" else 3
    mean = tuple(np.broadcast_to(np.asarray(_vec(p.get("mean")) or [0.0], float), (n_ch,)).tolist())
    std = tuple(np.broadcast_to(np.asarray(_vec(p.get("std")) or [1.0], float), (n_ch,)).tolist())
    if isinstance(c, int) and c != n_ch:
        raise ValueError(f"channels: {channels} gives {n_ch} channels but the model input has {c}")
    return Preprocess(resize=resize, center_crop=crop, interpolation=str(p.get("interpolation", "bilinear")),
                      scale=scale, mean=mean, std=std, channels=channels, layout=layout, dtype=dtype), notes
