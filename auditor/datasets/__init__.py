"""Where audit data comes from: lazy array sources, image folders and manifests, declared preprocessing, and
the registry of data sources (built-in and from plugins, ``auditor_register_datasets``)."""

from auditor.datasets.sources import (
    ArraySource,
    LazySource,
    Mapped,
    NpyFile,
    ParquetRows,
    Rows,
    XArray,
    iter_batches,
)

__all__ = ["ArraySource", "LazySource", "Mapped", "NpyFile", "ParquetRows", "Rows", "XArray", "iter_batches"]
