"""Configuration of the HTTP service: what it serves, how it binds, what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..models.text_encoder import MAX_QUERY_CHARS
from ..store.vector_index import IndexConfig


@dataclass(frozen=True)
class ServiceConfig:
    index_dir: Path
    model: str | None = None  # only needed when the index's model moved
    device: str | None = None  # torch device for the models: auto, cpu, cuda, ...
    use_gpu: bool = True  # search on the GPU when one is usable and the index fits (search/gpu.py)
    max_pixels: int = 50_000_000  # largest uploaded image, in pixels
    reload_seconds: float = 1.0  # how often the manifest is checked for a new index version
    batching: bool = True  # embed requests that queue up together (False: one model call each)
    search: IndexConfig = IndexConfig()  # nprobe and re-rank depth of every search


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond gets a 4xx, never a slow or failed server."""

    max_body: int = 32 << 20  # bytes of request body (uploads included)
    max_k: int = 1000  # results per search
    max_text: int = MAX_QUERY_CHARS  # characters per text (the CLI's limit too)
    max_texts: int = 64  # texts per embed call, captions per match
    max_negatives: int = 16
    max_vectors: int = 1000  # query vectors per batch vector search
    thumbnail_sizes: tuple[int, int] = (32, 1024)  # smallest and largest thumbnail side


@dataclass(frozen=True)
class ServerConfig:
    service: ServiceConfig
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; required when host is not a loopback address
    limits: Limits = field(default_factory=Limits)
    warm: bool = True  # load and run the models before accepting requests



@dataclass(frozen=True)
class RayServeConfig:
    """`llm2search serve --ray`: the same server, deployed on Ray Serve (docs/ray-serve.md)."""

    server: ServerConfig
    groups: int = 2  # shard groups; each holds about 1/groups of the rows (codes in RAM)
    group_replicas: int = 1  # replicas of each group (throughput, and survival of a lost replica)
    router_replicas: int = 1
    encoder_replicas: int = 1
    group_cpus: float = 1.0  # Ray resources reserved per replica (fractions allowed)
    group_gpus: float = 0.0  # >0: group replicas get a GPU and search their shards there
    router_cpus: float = 1.0
    encoder_cpus: float = 1.0
    encoder_gpus: float | None = None  # None: one per replica when the cluster has GPUs
    idle_close_s: float = 30.0  # a group replica closes a version that is not current and idle this long
