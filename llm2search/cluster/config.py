"""Options of a run on a Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNIT_FILES = 10_000  # files per work unit: one shard, one "done" mark


@dataclass(frozen=True)
class RayConfig:
    """Where and how a distributed indexing run executes. Pool sizes left as None are chosen
    from the cluster's resources when the run starts (see docs/cluster.md)."""

    address: str = "auto"  # "auto" (the running cluster), "local" (start one here), or host:port / ray://...
    unit_files: int = UNIT_FILES  # files per work unit
    embed_actors: int | None = None  # actor pool size; None: one per GPU, else one per 4 CPUs
    actor_gpus: float | None = None  # GPUs per embed actor; None: 1 on a cluster with GPUs, else 0
    actor_cpus: float = 1.0  # CPUs per embed actor (its torch threads on a CPU actor)
    decode_cpus: float = 1.0  # CPUs per decode task
    decode_batch: int = 32  # files per decode task call
    write_cpus: float = 1.0  # CPUs per shard-writing task
    stall_seconds: float = 600.0  # no progress in any stage this long: stop with an error


def ray_config(value: Any) -> RayConfig:
    """IndexingConfig.ray as given (an address string or a RayConfig) as a RayConfig."""
    if isinstance(value, RayConfig):
        return value
    if isinstance(value, str):
        return RayConfig(address=value.strip() or "auto")
    raise TypeError(f"IndexingConfig.ray is {type(value).__name__}; give an address string or a RayConfig")
