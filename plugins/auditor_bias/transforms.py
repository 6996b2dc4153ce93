"""Counterfactual cue transforms for ``bias.shortcut``: each takes a batch of inputs and returns a modified
copy, vectorised over the batch (fancy indexing, no per-sample loop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor import Dataset
from auditor_bias._common import feature_index, group_rows

TRANSFORMS = ("set_pixels", "paste_patch", "set_feature", "swap_feature", "swap_groups")


def _images(x: np.ndarray, layout: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A copy of the image batch ``x`` and a (N, C, H, W) view of it (writes go to the copy), whatever the
    layout; 3-D batches are single-channel (N, H, W)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"pixel transforms need image inputs (N, C, H, W) or (N, H, W, C); got shape {list(x.shape)}")
    out = np.array(x, copy=True)
    if out.ndim == 3:
        return out, out[:, None]
    return out, np.moveaxis(out, -1, 1) if (layout or "NCHW") == "NHWC" else out


def set_pixels(x: np.ndarray, pixels: Sequence[Sequence[int]], value: float, layout: str | None) -> np.ndarray:
    """Set the pixels ``[channel, row, col]`` of every image to ``value`` (channel indices refer to the
    model's channel axis whatever the layout)."""
    out, img = _images(x, layout)
    c, h, w = img.shape[1:]
    px = np.asarray(pixels, dtype=np.int64).reshape(-1, 3)
    if px.size == 0:
        raise ValueError("set_pixels: `pixels` is empty")
    if (px < 0).any() or (px >= [c, h, w]).any():
        raise ValueError(f"set_pixels: a pixel lies outside the image (channels {c}, height {h}, width {w})")
    img[:, px[:, 0], px[:, 1], px[:, 2]] = value
    return out


def paste_patch(x: np.ndarray, patch: Any, value: float | None, size: Sequence[int] | None,
                position: Sequence[int], layout: str | None) -> np.ndarray:
    """Paste a patch with its top-left corner at ``position`` ``[row, col]``.

    ``patch`` is an array ``[h, w]`` (every channel) or ``[C, h, w]`` (channel-first, whatever the model's
    layout); without it, a constant ``value`` patch of ``size`` ``[h, w]`` is pasted.
    """
    out, img = _images(x, layout)
    c, h, w = img.shape[1:]
    if patch is not None:
        arr = np.asarray(patch, dtype=np.float64)
        if arr.ndim == 2:
            arr = np.broadcast_to(arr, (c, *arr.shape))
        if arr.ndim != 3 or arr.shape[0] != c:
            raise ValueError(f"paste_patch: patch must be [h, w] or [{c}, h, w]; got {list(np.shape(patch))}")
    else:
        if value is None or size is None:
            raise ValueError("paste_patch: give `patch`, or a constant `value` with `patch_size` [h, w]")
        arr = np.full((c, *(int(s) for s in size)), float(value))
    r0, c0 = (int(v) for v in position)
    ph, pw = arr.shape[1], arr.shape[2]
    if r0 < 0 or c0 < 0 or r0 + ph > h or c0 + pw > w:
        raise ValueError(f"paste_patch: a {ph}x{pw} patch at {[r0, c0]} does not fit a {h}x{w} image")
    img[:, :, r0:r0 + ph, c0:c0 + pw] = arr
    return out


def set_feature(x: np.ndarray, j: int, value: float) -> np.ndarray:
    """Set feature ``j`` (of the flattened input) of every row to ``value``."""
    out = np.array(x, copy=True)
    out.reshape(len(out), -1)[:, j] = value
    return out


def swap_feature(x: np.ndarray, j: int, values: Sequence[float] | None) -> tuple[np.ndarray, list[float]]:
    """Exchange the two values ``a`` and ``b`` of feature ``j`` (rows with other values are unchanged):
    flipping a binary sensitive attribute, the counterfactual fairness test of Kusner et al. (NeurIPS 2017).
    Without ``values`` the feature must take exactly two values in the data."""
    flat = np.asarray(x).reshape(len(x), -1)
    col = flat[:, j]
    if values is None:
        uniq = np.unique(col)
        if len(uniq) != 2:
            raise ValueError(f"swap_feature: feature {j} takes {len(uniq)} values; give `values: [a, b]`")
        a, b = float(uniq[0]), float(uniq[1])
    else:
        if len(values) != 2:
            raise ValueError("swap_feature: `values` must be [a, b]")
        a, b = float(values[0]), float(values[1])
    out = np.array(x, copy=True)
    out.reshape(len(out), -1)[:, j] = np.where(col == a, b, np.where(col == b, a, col))
    return out, [a, b]


def swap_groups(x: np.ndarray, data: Dataset, group: str, features: Sequence[int],
                rng: np.random.Generator) -> np.ndarray:
    """Give each row the ``features`` of a random row of another group of ``group`` (a counterfactual
    change of group membership for attributes encoded in several inputs, e.g. one-hot columns or a region of
    an image). Rows with a missing group value are unchanged. Donors are drawn with the check's seeded RNG."""
    g = group_rows(data, [group])
    if g.n_groups < 2:
        raise ValueError(f"swap_groups: column '{group}' has fewer than two groups")
    cols = np.asarray(features, dtype=np.int64)
    flat = np.asarray(x).reshape(len(x), -1)
    out = np.array(x, copy=True)
    of = out.reshape(len(out), -1)
    valid = np.flatnonzero(g.codes >= 0)
    for gi in range(g.n_groups):  # a loop over groups, not rows
        rows = np.flatnonzero(g.codes == gi)
        others = valid[g.codes[valid] != gi]
        donors = others[rng.integers(0, len(others), size=len(rows))]
        of[np.ix_(rows, cols)] = flat[np.ix_(donors, cols)]
    return out


#: The transforms each cue argument configures (an argument given to another transform is a spec error).
ARGUMENTS = {"pixels": ("set_pixels",), "value": ("set_pixels", "set_feature", "paste_patch"),
             "patch": ("paste_patch",), "patch_size": ("paste_patch",), "feature": ("set_feature", "swap_feature"),
             "values": ("swap_feature",), "group": ("swap_groups",), "features": ("swap_groups",)}


def transform_problems(p: Any) -> list[str]:
    """What the shortcut parameters ``p`` lack for their ``transform``, or give that it does not take
    (``"<param>: <message>"``, checked when the spec is read)."""
    name = p.transform
    for arg, users in ARGUMENTS.items():
        if getattr(p, arg) is not None and name not in users:
            return [f"{arg}: applies to transform {' / '.join(users)}, not {name or 'none (no transform given)'}"]
    if name == "paste_patch" and p.patch is None and (p.value is None or p.patch_size is None):
        return ["patch: paste_patch needs `patch` ([h, w] or [C, h, w]), or a constant `value` with `patch_size`"]
    if name == "set_pixels" and (p.pixels is None or p.value is None):
        return ["pixels: set_pixels needs `pixels: [[c, row, col], ...]` and `value`"]
    if name in ("set_feature", "swap_feature") and p.feature is None:
        return [f"feature: {name} needs `feature` (an input index or a column name)"]
    if name == "set_feature" and p.value is None:
        return ["value: set_feature needs `value`"]
    if name == "swap_groups" and (not p.group or not p.features):
        return ["group: swap_groups needs `group` (a column) and `features` (inputs that encode it)"]
    return []


def apply(name: str, x: np.ndarray, p: Any, data: Dataset, layout: str | None,
          rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the transform ``name`` configured by the check's parameters ``p`` (already checked by
    :func:`transform_problems`); returns the new inputs and a description of what was done (for the report)."""
    if name == "set_pixels":
        return set_pixels(x, p.pixels, float(p.value), layout), {"pixels": len(p.pixels), "value": float(p.value)}
    if name == "paste_patch":
        pos = p.position or [0, 0]
        return paste_patch(x, p.patch, p.value, p.patch_size, pos, layout), {"position": list(pos)}
    if name in ("set_feature", "swap_feature"):
        j = feature_index(p.feature, data)
        if name == "set_feature":
            return set_feature(x, j, float(p.value)), {"feature_index": j, "value": float(p.value)}
        out, ab = swap_feature(x, j, p.values)
        return out, {"feature_index": j, "values": ab}
    if name == "swap_groups":
        idx = [feature_index(f, data) for f in p.features]
        return swap_groups(x, data, p.group, idx, rng), {"group": p.group, "features": idx}
    raise ValueError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
