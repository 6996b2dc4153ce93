"""Image folders and manifests to a :class:`~auditor.data.Dataset` (list, sample, check, decode lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.datasets.images import (
    ImageFiles,
    check_files,
    default_workers,
    list_folder,
    list_manifest,
    skipped_details,
)
from auditor.datasets.preprocess import resolve
from auditor.datasets.registry import LoadRequest
from auditor.errors import DataError

if TYPE_CHECKING:
    from auditor.data import DataConfig, Dataset


def _manifest_table(cfg: DataConfig) -> dict[str, Any]:
    from auditor.data import _load_csv

    path = cfg.path
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        from auditor.datasets.sources import column_values

        t = pq.read_table(path)
        return {n: column_values(t.column(n)) for n in t.column_names}
    raise DataError(f"{cfg.role}.images: a manifest is a .csv or .parquet file, not {path.name}")


def load_images(cfg: DataConfig, request: LoadRequest) -> Dataset:
    """An image folder or manifest as a lazily decoded data set."""
    from auditor.data import Dataset, normalise_groups, sample_indices

    role = cfg.role
    try:
        pp, notes = resolve(cfg.preprocess, request.input_shape, request.input_dtype, request.layout)
    except ValueError as exc:
        raise DataError(f"{role}.preprocess.{exc}") from None
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError(f"{role}.path: reading images needs Pillow (pip install pillow)") from None
    if cfg.path.is_dir():
        if cfg.images is not None:
            raise DataError(f"{role}.images: names a manifest column, but {cfg.path} is a folder")
        listing = list_folder(cfg.path, cfg.classes, role)
        kind = "folder"
    else:
        try:
            table = _manifest_table(cfg)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{role}.path: cannot read {cfg.path}: {type(exc).__name__}: {exc}") from None
        listing = list_manifest(cfg.path, table, str(cfg.images), cfg.y, cfg.groups, cfg.columns, cfg.classes, role)
        kind = "manifest"
        if not listing.files:
            raise DataError(f"{role}.path: {cfg.path} lists no image files")
    listed = len(listing.files)
    if cfg.limit is not None and cfg.limit < listed:
        idx = sample_indices(listed, cfg.limit, request.rng, listing.y)
        listing = listing.subset(idx)
        how = "stratified by label" if listing.y is not None else "uniform"
        notes.append(f"sampled {cfg.limit} of {listed} files before decoding ({how})")
    workers = cfg.workers or default_workers()
    checked = len(listing.files)
    listing, hw = check_files(listing, pp, workers)
    details, skip_notes = skipped_details(listing.skipped, checked)
    notes += skip_notes
    if not listing.files:
        first = "; ".join(f"{f}: {r}" for f, r in listing.skipped[:3])
        raise DataError(f"{role}.path: none of the {checked} image files of {cfg.path} can be read ({first})")
    if hw is None:
        raise DataError(f"{role}.preprocess: the images of {cfg.path} have different sizes and the model input has "
                        f"no fixed size; set data.preprocess.resize and center_crop")
    groups, missing = normalise_groups(listing.groups)
    x = ImageFiles(listing.files, pp, hw, workers)
    details["images"] = {"layout": kind, "files": listed, "decoded_size": [hw[0], hw[1]],
                         "classes": listing.classes, "preprocess": pp.describe(), "workers": workers}
    pixels = pp.pixels()
    notes.append(pixels.describe())
    columns: dict[str, np.ndarray] = dict(listing.columns)
    columns["file"] = np.asarray([str(f) for f in listing.files], dtype=object)
    return Dataset(x=x, y=listing.y, groups=groups, columns=columns, source=str(cfg.path),
                   batch_size=cfg.batch_size, notes=notes, missing=missing, total_rows=listed, details=details,
                   pixels=pixels)


def preprocess_arrays(ds: Dataset, cfg: DataConfig, request: LoadRequest) -> Dataset:
    """``data.preprocess`` for arrays of pixels (``(N, H, W, C)`` or ``(N, H, W)``, as images are stored): the
    numeric steps (channels, scale, mean/std, layout, dtype), applied per batch. Resizing needs image files."""
    from auditor.datasets.sources import mapped

    role = cfg.role
    raw = dict(cfg.preprocess or {})
    try:
        pp, notes = resolve(raw, request.input_shape, request.input_dtype, request.layout, images=False)
    except ValueError as exc:
        raise DataError(f"{role}.preprocess.{exc}") from None
    shape = tuple(ds.x.shape[1:])
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] != pp.n_channels:
        raise DataError(f"{role}.preprocess: x of {ds.source} has per-sample shape {list(ds.x.shape[1:])}; "
                        f"preprocessing expects stored pixels (H, W, {pp.n_channels}) for channels {pp.channels}")
    flip = pp.channels == "BGR"

    def finish(b: np.ndarray) -> np.ndarray:
        b = b.reshape(len(b), *shape)
        return pp.finish(b[..., ::-1] if flip else b)

    ds.x = mapped(ds.x, finish, pp.sample_shape(shape[0], shape[1]), np.dtype(pp.dtype), "preprocess")
    ds.pixels = pp.pixels()
    ds.details["preprocess"] = pp.describe()
    ds.notes.extend([*notes, "x read as stored pixels (H, W, C); preprocessing applied per batch",
                     ds.pixels.describe()])
    return ds
