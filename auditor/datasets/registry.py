"""Data sources: how a ``data:`` section becomes a :class:`~auditor.data.Dataset`.

The built-in array formats (``.npz``, ``.npy``, ``.csv``, ``.parquet``) are read by :func:`auditor.data.load_dataset`
itself; image folders and manifests by :class:`ImageFolderSource`; a plugin adds its own through the
``auditor_register_datasets`` hook (e.g. WebDataset shards). A source is picked by ``data.format`` when the
spec names one, else by the first source whose :meth:`DataSource.claims` accepts the section (plugins are asked
before the built-in ones). Whatever it reads, a source returns the same ``Dataset``: ``x`` an array or a lazy
:class:`~auditor.datasets.sources.ArraySource`, labels, groups, notes, and ``details`` for the report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from auditor.data import DataConfig, Dataset


@dataclass(frozen=True)
class LoadRequest:
    """What a source is told besides its ``data:`` section: the seeded generator for ``limit`` samples and
    the model input the data will feed (shape with symbolic dims as strings or ``None``, dtype, layout), so a
    source can choose sizes and dtype (``None`` when unknown)."""

    rng: np.random.Generator
    input_shape: tuple[Any, ...] | None = None
    input_dtype: np.dtype[Any] | None = None
    layout: str | None = None


class DataSource(ABC):
    """A kind of data a spec can point ``data.path`` at. Subclasses set :attr:`name` and implement
    :meth:`claims` and :meth:`load`; ``data.options`` carries any source-specific settings."""

    #: Selected by ``data.format: <name>``; unique among installed sources.
    name: ClassVar[str] = ""
    #: One line for ``auditor plugins`` and the docs.
    description: ClassVar[str] = ""

    @abstractmethod
    def claims(self, cfg: DataConfig) -> bool:
        """Whether this source reads ``cfg`` when the spec names no ``format`` (look at the path only)."""

    @abstractmethod
    def load(self, cfg: DataConfig, request: LoadRequest) -> Dataset:
        """Read (lazily where large) the data; raise :class:`~auditor.errors.DataError` with one line."""


class ImageFolderSource(DataSource):
    """Image files: a class-per-sub-folder folder, or a CSV/parquet manifest with ``data.images``."""

    name = "images"
    description = "JPEG/PNG/... files: a folder with one sub-folder per class, or a manifest (data.images)"

    def claims(self, cfg: DataConfig) -> bool:
        """A folder, or a table with an ``images`` column named."""
        return cfg.path.is_dir() or cfg.images is not None

    def load(self, cfg: DataConfig, request: LoadRequest) -> Dataset:
        """List, sample, check, then decode lazily."""
        from auditor.datasets.loader import load_images

        return load_images(cfg, request)


BUILTIN_SOURCES: dict[str, type[DataSource]] = {ImageFolderSource.name: ImageFolderSource}
