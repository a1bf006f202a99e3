"""Progress of a distributed run: a counter actor every task reports to (fire and forget), and
the driver's progress line with rate and ETA."""

from __future__ import annotations

import sys
import time
from typing import Any

STAGES = ("decoded", "embedded", "received", "written", "committed")

_handles: dict[str, Any] = {}


class Tally:
    """Counts per stage, and the embed actors that announced themselves (for tests and status)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.actor_handles: list[Any] = []
        self.changed = time.time()

    def add(self, stage: str, n: int, actor: Any = None) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + n
        if actor is not None:
            self.actor_handles.append(actor)
        self.changed = time.time()

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def actors(self) -> list[Any]:
        return list(self.actor_handles)


def start_tally(ray: Any, name: str) -> Any:
    """The run's counter actor: no CPU, so it never waits behind the work it counts."""
    return ray.remote(num_cpus=0, max_restarts=-1)(Tally).options(name=name, lifetime=None).remote()


def report(name: str, stage: str, n: int, actor: Any = None) -> None:
    """From a task or actor: add `n` to `stage` (never blocks, never fails the work)."""
    try:
        import ray

        handle = _handles.get(name)
        if handle is None:
            handle = _handles[name] = ray.get_actor(name)
        handle.add.remote(stage, n, actor)
    except Exception:  # noqa: BLE001 - progress is advisory; the watchdog sees a silent stage
        _handles.pop(name, None)


class ProgressLine:
    """The driver's progress bar over the run's files (tqdm: rate and ETA)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, counts: dict[str, int]) -> None:
        if self.bar is None:
            return
        if n:
            self.bar.update(n)
        self.bar.set_postfix({k: counts.get(k, 0) for k in ("decoded", "embedded", "committed")}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
