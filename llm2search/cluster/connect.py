"""Importing Ray and joining a cluster. Ray is an optional extra: without it, one line says
which extra to install. A run disconnects only what it connected; it never stops a cluster."""

from __future__ import annotations

from typing import Any

from ..errors import Llm2SearchError

INSTALL_HINT = "pip install 'llm2search[cluster]'"


class ClusterError(Llm2SearchError):
    """A distributed run could not start or could not go on."""


def require_ray() -> Any:
    """The `ray` module, with Ray Data; ClusterError when the cluster extra is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401 - the part a run needs
    except ImportError as e:
        raise ClusterError(f"--ray needs Ray, which is not installed; install the cluster extra: "
                           f"{INSTALL_HINT}") from e
    return ray


class Connection:
    """This process's connection to a cluster, made by `connect` (or found already open)."""

    def __init__(self, ray: Any, owned: bool):
        self.ray = ray
        self.owned = owned  # True when this run called ray.init (and so may call ray.shutdown)

    def close(self) -> None:
        """Disconnect if this run connected (for a "local" cluster this also ends it; a running
        cluster is never stopped: that is `ray stop`'s job, never ours)."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def connect(address: str) -> Connection:
    ray = require_ray()
    if ray.is_initialized():  # the caller joined a cluster already (tests, notebooks)
        return Connection(ray, owned=False)
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address == "local":  # address="local": a new cluster even where one runs already
            ray.init(address="local", include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address!r} ({first}); start one with "
                           "`ray start --head` on the head node, or give its address to --ray") from e
    return Connection(ray, owned=True)
