"""The `cluster` config section: where Ray runs and where runs are stored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'). "
        "Unset (and no RAY_ADDRESS): raylm starts an embedded local Ray.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs of the embedded Ray. Default: max(cores, 8), so that "
        "training workers and Ray Data tasks can share a small machine.",
    )
    include_dashboard: bool = Field(False, description="Start the Ray dashboard (embedded Ray only).")
    dashboard_host: str = Field(
        "127.0.0.1", description="Interface the embedded dashboard binds to; keep local unless told."
    )
    storage_path: str = Field(
        "runs",
        description="Where runs and checkpoints live: a local path, s3://bucket/prefix or gs://... "
        "Multi-node training needs storage every node sees.",
    )
    object_store_memory_mb: int | None = Field(
        None, ge=64, description="Object store size of the embedded Ray (MiB)."
    )
