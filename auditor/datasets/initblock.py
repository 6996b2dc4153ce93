"""The ``data:`` block ``auditor init MODEL --data FOLDER`` writes for an image folder: the layout found, and a
preprocessing block filled in from the model input (crop size, layout, channels, dtype)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from auditor.datasets.images import EXTENSIONS
from auditor.datasets.preprocess import PRESETS, resolve


def _count_images(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def image_data_block(folder: Path, rel: str, input_shape: tuple[Any, ...] | None, input_dtype: Any,
                     layout: str | None) -> list[str]:
    """YAML lines (``data:`` and its keys) for an image folder feeding a model input."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    counts = {d.name: _count_images(d) for d in subdirs}
    total = sum(counts.values()) if subdirs else _count_images(folder)
    pp, _ = resolve(None, input_shape, np.dtype(input_dtype) if input_dtype is not None else None, layout)
    lines = ["data:", f"  path: {rel}"]
    if subdirs:
        names = list(counts)
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        lines.append(f"  # {len(names)} class sub-folders ({shown}), {total} image files: labels are the sorted "
                     f"folder names' positions")
        lines.append(f"  # classes: [{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}]   # the model's "
                     f"class order, when it is not the sorted folder names")
    else:
        lines.append(f"  # {total} image files, no class sub-folders: no labels")
    lines += ["  # limit: 2000         # audit a seeded sample of the files, stratified by label",
              "  batch_size: 64", "  preprocess:          # applied the same way for every check: check it against "
              "your training recipe"]
    crop = pp.center_crop
    if pp.integer:
        lines.append(f"    # the model takes {pp.dtype} pixels: no scale, mean or std")
        if crop:
            lines.append(f"    resize: {crop[0] if crop[0] == crop[1] else list(crop)}")
            lines.append(f"    center_crop: {crop[0] if crop[0] == crop[1] else list(crop)}")
    else:
        imagenet = PRESETS["imagenet"]
        if crop:
            short = round(min(crop) * 256 / 224)
            lines.append(f"    resize: {short}            # shorter side, then the crop (ImageNet's 256 -> 224 "
                         f"ratio)")
            lines.append(f"    center_crop: {crop[0] if crop[0] == crop[1] else list(crop)}       # the model "
                         f"input's size")
        else:
            lines += ["    resize: 256            # the model input has no fixed size: set yours",
                      "    center_crop: 224"]
        lines.append("    scale: 0.00392156862745098   # 1/255: pixels to [0, 1]")
        if pp.channels == "L":
            lines += ["    # mean: [0.5]", "    # std: [0.5]"]
        else:
            lines += [f"    mean: {imagenet['mean']}   # ImageNet's; use your training set's",
                      f"    std: {imagenet['std']}"]
    lines += [f"    channels: {pp.channels}", f"    layout: {pp.layout}", f"    dtype: {pp.dtype}",
              f"    # or: preset: {', '.join(sorted(PRESETS))}"]
    return lines
