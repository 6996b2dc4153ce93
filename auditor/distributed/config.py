"""The ``execution:`` section of a spec (and ``--ray [ADDRESS]``): which engine runs the checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: JSON Schema of ``execution:`` (part of the spec's schema).
EXECUTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Where the checks run: this machine (local, the default) or a Ray cluster (see docs/ray.md).",
    "properties": {
        "engine": {"enum": ["local", "ray"], "default": "local",
                   "description": "local: this process; ray: actors on a Ray cluster."},
        "address": {"type": ["string", "null"],
                    "description": "Ray cluster to join (host:port, ray://host:port or auto). Default: the "
                                   "cluster named by RAY_ADDRESS, else a local Ray instance started for the run."},
        "workers": {"type": "integer", "minimum": 1,
                    "description": "Worker actors (default: the cluster's CPUs divided by cpus_per_worker)."},
        "cpus_per_worker": {"type": "number", "exclusiveMinimum": 0, "default": 1,
                            "description": "CPUs each worker reserves (its ONNX Runtime threads)."},
        "gpus_per_worker": {"type": "number", "minimum": 0, "default": 0,
                            "description": "GPUs each worker reserves (ONNX Runtime's CUDA provider when it "
                                           "loads, torch on CUDA)."},
        "data": {"enum": ["shared", "driver"], "default": "shared",
                 "description": "shared: workers read data.path themselves (shared storage); driver: the "
                                "driver's data is sent through Ray's object store."},
        "max_retries": {"type": "integer", "minimum": 0, "default": 2,
                        "description": "Times a shard is resubmitted to another worker when its worker dies."},
        "shard_rows": {"type": "integer", "minimum": 1,
                       "description": "Rows per shard of every sharded check (default: each check's own, 512 for "
                                      "attacks and sweeps, 4096 for prediction passes). Applies to local runs "
                                      "too; the report does not depend on it (randomness is drawn per sample)."},
        "shard_timeout_s": {"type": "number", "exclusiveMinimum": 0,
                            "description": "On Ray, the wall-time limit of one shard (default: the check's "
                                           "timeout_s). A shard over it is that check's error."},
    },
}


@dataclass(frozen=True)
class ExecutionConfig:
    """Which engine runs the checks, and how the Ray engine sizes its workers."""

    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    data: str = "shared"
    max_retries: int = 2
    shard_rows: int | None = None
    shard_timeout_s: float | None = None

    @property
    def distributed(self) -> bool:
        """Whether the checks run on a Ray cluster."""
        return self.engine == "ray"


def parse_execution(doc: dict[str, Any] | None) -> ExecutionConfig | None:
    """The validated ``execution:`` mapping as an :class:`ExecutionConfig` (``None`` when absent)."""
    if doc is None:
        return None
    return ExecutionConfig(
        engine=str(doc.get("engine", "local")), address=doc.get("address"), workers=doc.get("workers"),
        cpus_per_worker=float(doc.get("cpus_per_worker", 1)), gpus_per_worker=float(doc.get("gpus_per_worker", 0)),
        data=str(doc.get("data", "shared")), max_retries=int(doc.get("max_retries", 2)),
        shard_rows=None if doc.get("shard_rows") is None else int(doc["shard_rows"]),
        shard_timeout_s=None if doc.get("shard_timeout_s") is None else float(doc["shard_timeout_s"]),
    )
