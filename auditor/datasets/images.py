"""Image folders and manifests: files listed, sampled (``limit``, stratified by label) and checked before any
pixel is decoded, then decoded with Pillow in a small thread pool, batch by batch, with the declared
preprocessing (:mod:`auditor.datasets.preprocess`).

Layouts:

- a folder with one sub-folder per class (``val/cat/1.jpg``): labels are the sorted sub-folder names' indices,
  or their positions in ``data.classes`` when given (so folder names map to the model's output columns); a
  folder of images without sub-folders has no labels;
- a manifest (``.csv`` or ``.parquet``) with a path column (``data.images``), a label column (``data.y``) and
  any group columns; relative paths resolve against the manifest's folder. String labels map to ``data.classes``
  or, without it, to their sorted unique values.

Missing files and files Pillow cannot decode are counted and listed in the report (``skipped_files``), never
dropped silently; a folder with no image at all, or a manifest column that does not exist, is a one-line
:class:`~auditor.errors.DataError` (exit 4).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor.datasets.preprocess import Preprocess
from auditor.datasets.sources import LazySource
from auditor.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
#: How many skipped files the report names (all are counted).
SHOW_SKIPPED = 10


def default_workers() -> int:
    """Decoding threads: Pillow releases the GIL while decoding and resizing, so threads scale to the cores."""
    return max(1, min(8, os.cpu_count() or 1))


class _Pool:
    """One decoding pool per process, created on first use (threads are cheap to keep, costly to re-create)."""

    _lock = threading.Lock()
    _pools: dict[int, ThreadPoolExecutor] = {}

    @classmethod
    def get(cls, workers: int) -> ThreadPoolExecutor:
        with cls._lock:
            if workers not in cls._pools:
                cls._pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auditor-decode")
            return cls._pools[workers]


class ImageFiles(LazySource):
    """Decoded, preprocessed image files as a batch-first array (decoded when rows are read)."""

    def __init__(self, files: Sequence[Path], pp: Preprocess, sample_hw: tuple[int, int], workers: int) -> None:
        self.files = [Path(f) for f in files]
        self.pp = pp
        self.workers = workers
        super().__init__((len(self.files), *pp.sample_shape(*sample_hw)), np.dtype(pp.dtype))
        self._hw = sample_hw

    def _decode_one(self, path: Path) -> np.ndarray:
        try:
            arr = self.pp.decode(path)
        except Exception as exc:  # checked before the audit; a file changed since is one clear line
            raise DataError(f"{path}: cannot decode the image: {type(exc).__name__}: {exc}") from None
        if arr.shape[:2] != self._hw:
            raise DataError(f"{path}: decodes to {arr.shape[1]}x{arr.shape[0]} pixels but the other images to "
                            f"{self._hw[1]}x{self._hw[0]}; set data.preprocess.resize and center_crop")
        return arr

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        files = [self.files[int(i)] for i in idx]
        if len(files) > 1 and self.workers > 1:
            pixels = list(_Pool.get(self.workers).map(self._decode_one, files))
        else:
            pixels = [self._decode_one(f) for f in files]
        if not pixels:
            return np.empty((*self.shape[:0], 0, *self.shape[1:]), self.dtype)[0:0]
        return self.pp.finish(np.stack(pixels))

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._gather(np.arange(start, stop))

    def take(self, idx: np.ndarray) -> LazySource:
        """A lazy subset: its own (shorter) file list."""
        return ImageFiles([self.files[int(i)] for i in idx], self.pp, self._hw, self.workers)


@dataclass
class Listing:
    """Files of an image data set before decoding, with labels, groups and other columns per file."""

    files: list[Path]
    y: np.ndarray | None
    classes: list[str] | None
    groups: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    root: Path
    skipped: list[tuple[str, str]]

    def subset(self, keep: np.ndarray) -> Listing:
        """The files at indices ``keep``, with their labels and columns."""
        return Listing([self.files[int(i)] for i in keep],
                       None if self.y is None else self.y[keep], self.classes,
                       {k: v[keep] for k, v in self.groups.items()}, {k: v[keep] for k, v in self.columns.items()},
                       self.root, list(self.skipped))


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")


def list_folder(root: Path, classes: Sequence[str] | None, role: str) -> Listing:
    """A class-per-sub-folder layout (or a flat folder of unlabelled images)."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    skipped: list[tuple[str, str]] = []
    if not subdirs:
        files = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
        if not files:
            raise DataError(f"{role}.path: {root}: no image files ({', '.join(EXTENSIONS[:4])}, ...) and no "
                            f"class sub-folders")
        return Listing(files, None, None, {}, {}, root, skipped)
    names = [d.name for d in subdirs]
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{role}.classes: sub-folder(s) {', '.join(unknown[:5])} of {root} are not in "
                            f"data.classes")
        index = {c: i for i, c in enumerate(classes)}
    else:
        index = {n: i for i, n in enumerate(names)}
    found: list[Path] = []
    labels: list[int] = []
    for d in subdirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if _is_image(p):
                    found.append(p)
                    labels.append(index[d.name])
    for p in sorted(root.iterdir()):
        if p.is_file() and _is_image(p):
            skipped.append((p.name, "not inside a class sub-folder"))
    if not found:
        raise DataError(f"{role}.path: {root}: the class sub-folders ({', '.join(names[:5])}) hold no image files")
    return Listing(found, np.asarray(labels, dtype=np.int64), list(classes) if classes else names, {}, {}, root,
                   skipped)


def list_manifest(path: Path, table: dict[str, np.ndarray], images: str, y: str | None, groups: Sequence[str],
                  columns: Sequence[str], classes: Sequence[str] | None, role: str) -> Listing:
    """A manifest table (path column, label column, group columns) -> files and labels."""
    have = list(table)

    def need(key: str, what: str) -> np.ndarray:
        if key not in table:
            raise DataError(f"{role}.{what}: column '{key}' not in {path} (columns: {', '.join(have)})")
        return table[key]

    rel = need(images, "images")
    base = path.parent
    files = [Path(str(v)) if Path(str(v)).is_absolute() else base / str(v) for v in rel]
    labels = None
    cls: list[str] | None = None
    if y is not None:
        raw = need(y, "y")
        if raw.dtype.kind in "iu":
            labels = raw.astype(np.int64)
            cls = list(classes) if classes else None
        elif raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(np.mod(raw, 1) == 0):
            labels = raw.astype(np.int64)
            cls = list(classes) if classes else None
        else:
            txt = np.asarray([None if v is None else str(v) for v in raw], dtype=object)
            if any(v is None for v in txt):
                raise DataError(f"{role}.y: {sum(v is None for v in txt)} labels are empty in {path}")
            cls = list(classes) if classes else sorted(set(txt))
            index = {c: i for i, c in enumerate(cls)}
            unknown = sorted({str(v) for v in txt if v not in index})
            if unknown:
                raise DataError(f"{role}.y: label(s) {', '.join(unknown[:5])} in {path} are not in data.classes")
            labels = np.asarray([index[str(v)] for v in txt], dtype=np.int64)
    grp = {g: need(g, f"groups[{i}]") for i, g in enumerate(groups)}
    cols = {c: need(c, "columns") for c in columns}
    return Listing(files, labels, cls, grp, cols, base, [])


def check_files(listing: Listing, pp: Preprocess, workers: int) -> tuple[Listing, tuple[int, int] | None]:
    """Drop (and record) missing and undecodable files; the common decoded size when the recipe fixes one.

    JPEGs are decoded at 1/8 scale (Pillow's draft mode: the whole entropy-coded stream is read, so a truncated
    file fails, at a fraction of the cost); other formats are verified (PNG checks every chunk's CRC)."""
    from PIL import Image

    def probe(p: Path) -> tuple[str | None, tuple[int, int] | None]:
        if not p.is_file():
            return "missing", None
        try:
            with Image.open(p) as im:
                size = im.size
                if im.format == "JPEG":
                    im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                    im.load()
                else:
                    im.verify()
            return None, size
        except Exception as exc:
            return f"cannot decode ({type(exc).__name__}: {str(exc)[:80]})", None

    results = list(_Pool.get(workers).map(probe, listing.files)) if workers > 1 else \
        [probe(p) for p in listing.files]
    bad = np.array([r[0] is not None for r in results], dtype=bool)
    skipped = list(listing.skipped)
    for p, (reason, _) in zip(listing.files, results):
        if reason is not None:
            skipped.append((_rel(p, listing.root), reason))
    keep = np.flatnonzero(~bad)
    out = listing.subset(keep)
    out.skipped = skipped
    sizes = {pp.resized_size(*r[1]) for r in results if r[1] is not None}
    hw: tuple[int, int] | None
    if pp.center_crop is not None:
        hw = pp.center_crop
    elif len(sizes) == 1:
        w, h = next(iter(sizes))
        hw = (h, w)
    else:
        hw = None
    return out, hw


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def skipped_details(skipped: list[tuple[str, str]], total: int) -> tuple[dict[str, Any], list[str]]:
    """``skipped_files`` for the report's data section, and a note."""
    if not skipped:
        return {"skipped_files": {"count": 0, "first": []}}, []
    reasons: dict[str, int] = {}
    for _, r in skipped:
        key = r.split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    first = [{"file": f, "reason": r} for f, r in skipped[:SHOW_SKIPPED]]
    how = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    note = (f"skipped {len(skipped)} of {total} image files ({how}): "
            f"{', '.join(f for f, _ in skipped[:SHOW_SKIPPED])}{' ...' if len(skipped) > SHOW_SKIPPED else ''}")
    return {"skipped_files": {"count": len(skipped), "by_reason": reasons, "first": first}}, [note]
