"""`llm2search serve --ray`: the HTTP API of `llm2search serve` on Ray Serve (DESIGN §9). Needs
the `cluster` extra; only `llm2search serve --ray` imports this module.

One application, three kinds of deployment:
  router     the ingress: serve/routes.py's FastAPI app over a SearchService whose index is a
             RoutedIndex (pins a version, holds the coarse quantizer, parses filters, merges)
  group-<g>  shard group g of G: a GroupReplica answering for its shards of the version each
             request names (serve/shard_groups.py), with replicas
  encoder    the query encoder: the index's model, requests batched (serve.batch), one GPU per
             replica when the cluster has GPUs
The index lives where every node reads it at the same path (a shared filesystem)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError

from ..errors import Llm2SearchError, ModelMismatchError
from ..models.spec import identities_match
from ..store.manifest import Manifest
from .config import RayServeConfig, ServiceConfig
from .router import RoutedIndex
from .server import build_app
from .service import MAX_IMAGE_BATCH, MAX_TEXT_BATCH, SearchService
from .shard_groups import GroupReplica, Ticket, call_view, version_key

APP_NAME = "llm2search"
CALL_ATTEMPTS = 4  # a group call whose replica died is sent again (reads only: safe to repeat)
RETRY_PAUSE_S = 0.2
TRUNCATION_CACHE = 4096  # texts whose "cut to the token limit" flag the router remembers


@serve.deployment(max_ongoing_requests=64)
class ShardGroup:
    """One shard group: its replicas answer for the group's shards of any pinned version."""

    def __init__(self, index_dir: str, group: int, groups: int, service: ServiceConfig, idle_close_s: float):
        self._replica = GroupReplica(Path(index_dir), group, groups, service.search, service.use_gpu,
                                     resolve=_resolve)
        self._dir, self._idle = Path(index_dir), idle_close_s
        threading.Thread(target=self._sweep, name="llm2search-sweep", daemon=True).start()

    def _sweep(self) -> None:
        from ..store.manifest import read_manifest

        while True:
            time.sleep(max(0.2, self._idle / 2))
            try:
                current = version_key(read_manifest(self._dir))
            except Exception:  # noqa: BLE001 - no readable manifest right now: try again later
                continue
            self._replica.sweep(current, self._idle)

    def call(self, method: str, ticket: Ticket, *args: Any) -> Any:
        return call_view(self._replica, method, ticket, *args)


@serve.deployment(max_ongoing_requests=128)
class QueryEncoder:
    """Both towers of the index's model; concurrent requests are embedded in one model call."""

    def __init__(self, service: ServiceConfig):
        from ..models.embedder import Embedder
        from ..models.presets import spec_for_index
        from ..store.manifest import read_manifest

        self.spec = spec_for_index(read_manifest(service.index_dir).model, service.model)
        self._identity = self.spec.identity()  # local weights are digested here, where they are
        self._embedder = Embedder(self.spec, service.device)
        self._lock = threading.Lock()  # a torch model is not re-entrant; text and image batches alternate
        self._model(self._embedder.embed_texts, ["warm up"])  # loaded and run before any request

    def describe(self) -> tuple[Any, dict[str, Any]]:
        """(the model's spec, its identity): what the router checks each version against."""
        return self.spec, self._identity

    @serve.batch(max_batch_size=MAX_TEXT_BATCH, batch_wait_timeout_s=0.002)
    async def embed_texts(self, requests: list[list[str]]) -> list[tuple[np.ndarray, list[bool]]]:
        """Each request's (unit vectors, which texts were cut to the token limit)."""
        texts = [t for r in requests for t in r]
        vectors, cut = await asyncio.to_thread(self._model, self._embed_and_check, texts)
        sizes = [len(r) for r in requests]
        return list(zip(_split(vectors, sizes), _split(np.array(cut, dtype=bool), sizes)))

    def _embed_and_check(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        return self._embedder.embed_texts(texts), self._embedder.truncated(texts)

    @serve.batch(max_batch_size=MAX_IMAGE_BATCH, batch_wait_timeout_s=0.002)
    async def embed_pixels(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self._model, self._embedder.embed_pixels, np.concatenate(requests))
        return _split(vectors, [len(r) for r in requests])

    def truncated(self, texts: list[str]) -> list[bool]:
        return self._model(self._embedder.truncated, texts)

    def _model(self, fn: Callable[[Any], Any], items: Any) -> Any:
        with self._lock:
            return fn(items)


@serve.deployment(max_ongoing_requests=64)
@serve.ingress()
class Router:
    """The HTTP API; its index is the current version, searched through the shard groups."""

    async def __init__(self, config: RayServeConfig, encoder: Any, *groups: Any):
        self._config = config
        self._encoder = encoder
        self._groups = RayGroups(list(groups))
        # Off the replica's event loop: opening a version waits for the groups and the encoder.
        self.service = await asyncio.to_thread(self._start)

    def _start(self) -> SearchService:
        service = SearchService(self._config.server.service, self._open, remote_models=True)
        if self._config.server.warm:
            service.warm()
        return service

    def _open(self, service: ServiceConfig) -> RoutedIndex:
        index = RoutedIndex(service.index_dir, self._groups, service.search)
        try:
            spec, identity = _result(self._encoder.describe.remote())
            if not identities_match(index.manifest.model, identity):
                raise ModelMismatchError(
                    f"the index at {service.index_dir} is now built with model "
                    f"{index.manifest.model.get('name')!r}, not the {spec.name!r} the query encoder holds; "
                    "restart `llm2search serve --ray` to load it")
            index._embedder = RemoteEncoder(self._encoder, spec)
        except BaseException:
            index.close()
            raise
        return index

    def __serve_build_asgi_app__(self) -> Any:
        server = self._config.server
        return build_app(self.service, server.token, server.limits)


class RemoteEncoder:
    """The router's embedder: the query-encoder deployment, called like models.Embedder. Which
    texts were cut to the token limit comes back with their vectors and is remembered, so the
    answer's `truncated` costs no extra hop."""

    def __init__(self, handle: Any, spec: Any):
        self._handle = handle
        self.spec = spec
        self._cut: OrderedDict[str, bool] = OrderedDict()
        self._cut_lock = threading.Lock()

    @property
    def token_limit(self) -> int:
        from ..models.text_encoder import token_limit

        return token_limit(self.spec.text_config.max_length)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        vectors, cut = _result(self._handle.embed_texts.remote(list(texts)))
        with self._cut_lock:
            for text, flag in zip(texts, cut):
                self._cut[text] = bool(flag)
                self._cut.move_to_end(text)
            while len(self._cut) > TRUNCATION_CACHE:
                self._cut.popitem(last=False)
        return vectors

    def truncated(self, texts: list[str]) -> list[bool]:
        with self._cut_lock:
            known = [self._cut.get(t) for t in texts]
        if all(flag is not None for flag in known):
            return [bool(flag) for flag in known]
        return [bool(flag) for flag in _result(self._handle.truncated.remote(list(texts)))]

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return _result(self._handle.embed_pixels.remote(pixels))


class RayGroups:
    """GroupCalls over the shard-group deployments (serve/router.py)."""

    def __init__(self, handles: list[Any]):
        self.count = len(handles)
        self._handles = handles

    def ticket(self, manifest: Manifest) -> Ticket:
        # The manifest goes to the object store once per version; requests carry a reference,
        # fetched only by a replica that has not opened that version yet.
        return Ticket(version_key(manifest), ray.put(manifest))

    def call(self, group: int, method: str, ticket: Ticket, *args: Any) -> "_Call":
        return _Call(self._handles[group], (method, ticket, *args))


class _Call:
    """One group call in flight; sent again when the replica serving it died, so a killed
    replica costs a retry, not a failed request (Ray Serve replaces the replica)."""

    def __init__(self, handle: Any, args: tuple):
        self._handle, self._args = handle, args
        self._response = handle.call.remote(*args)

    def result(self) -> Any:
        for attempt in range(CALL_ATTEMPTS):
            try:
                return _result(self._response)
            except RayActorError:
                if attempt == CALL_ATTEMPTS - 1:
                    raise
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
                self._response = self._handle.call.remote(*self._args)
        raise AssertionError("unreachable")


def _result(response: Any) -> Any:
    """A deployment's answer; a user-facing error raised there is raised here as itself."""
    try:
        return response.result()
    except RayTaskError as e:
        if isinstance(e.cause, Llm2SearchError):
            raise e.cause from None
        raise


def _resolve(manifest: Any) -> Manifest:
    return ray.get(manifest) if isinstance(manifest, ray.ObjectRef) else manifest


def _split(vectors: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return list(np.split(vectors, np.cumsum(sizes)[:-1]))


def build(config: RayServeConfig) -> Any:
    """The Ray Serve application (bind graph) for `config`."""
    c, service = config, config.server.service
    gpus = c.encoder_gpus if c.encoder_gpus is not None else _default_gpus(service.device)
    encoder = QueryEncoder.options(
        name="encoder", num_replicas=c.encoder_replicas,
        ray_actor_options={"num_cpus": c.encoder_cpus, "num_gpus": gpus}).bind(service)
    groups = [ShardGroup.options(name=f"group-{g}", num_replicas=c.group_replicas,
                                 ray_actor_options={"num_cpus": c.group_cpus, "num_gpus": c.group_gpus})
              .bind(str(service.index_dir), g, c.groups, replace(service, use_gpu=service.use_gpu and c.group_gpus > 0),
                    c.idle_close_s)
              for g in range(c.groups)]
    return Router.options(name="router", num_replicas=c.router_replicas,
                          ray_actor_options={"num_cpus": c.router_cpus}).bind(config, encoder, *groups)


def _default_gpus(device: str | None) -> float:
    """One GPU per encoder replica when the cluster has any and the device is not the CPU."""
    if device == "cpu":
        return 0
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def deploy(config: RayServeConfig) -> None:
    """Start Serve's HTTP proxy on the configured host and port (where this cluster has no Serve
    instance yet) and deploy the application; returns once every replica is up."""
    server = config.server
    c = config
    wanted = (c.groups * c.group_replicas * c.group_cpus + c.router_replicas * c.router_cpus
              + c.encoder_replicas * c.encoder_cpus)
    have = ray.cluster_resources().get("CPU", 0)
    if wanted > have:  # Serve would wait forever for replicas that cannot be placed
        raise Llm2SearchError(f"the deployment reserves {wanted:g} CPUs and the Ray cluster has {have:g}; "
                              "lower --cpus-per-replica or the replica counts, or add nodes")
    serve.start(http_options={"host": server.host, "port": server.port})
    try:
        serve.run(build(config), name=APP_NAME, route_prefix="/")
    except RuntimeError as e:
        raise Llm2SearchError(f"the Ray Serve deployment failed: {_first_line(e)}") from e


def run(config: RayServeConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Deploy on the Ray cluster this process is connected to (cluster/connect.py) and serve
    until interrupted (Ctrl-C or SIGTERM); then delete the application, and shut down the Serve
    instance only where this call started it."""
    from ..store.manifest import read_manifest
    from .security import check_bind

    server = config.server
    check_bind(server.host, server.token)
    count = read_manifest(server.service.index_dir).count  # a missing index fails here, in one line
    _stop_on_sigterm()
    serve_was_running = _serve_running()
    try:
        deploy(config)
        if on_ready is not None:
            on_ready(count)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        if not serve_was_running:
            serve.shutdown()


def _stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C, so the cleanup in `run` runs (Python's default skips it)."""
    import signal

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _serve_running() -> bool:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
