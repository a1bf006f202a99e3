"""Which stage of a distributed run stopped making progress. Ray jobs are known to stall
silently (actors holding every CPU so decode tasks never start, dead actors keeping pool
slots); the driver stops with an error naming the stage instead of waiting forever."""

from __future__ import annotations

import time

from .connect import ClusterError

# Stages in the order rows pass them, and what each one waits for.
ORDER = ("decoded", "embedded", "received", "written", "committed")
WHAT = {
    "decoded": "decode (CPU tasks reading and decoding files)",
    "embedded": "embed (the model's actor pool)",
    "received": "transfer of embedded rows to the driver",
    "written": "shard writing (write tasks)",
    "committed": "commit (the driver)",
}


class StalledError(ClusterError):
    """No stage made progress for too long. Committed work is kept; rerunning resumes."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


class Watchdog:
    def __init__(self, stall_seconds: float, total: int, clock=time.monotonic):
        self.stall_seconds, self.total, self.clock = stall_seconds, total, clock
        self.last: dict[str, int] = {}
        self.since = clock()

    def observe(self, counts: dict[str, int]) -> None:
        """Counts so far (rows per stage; actors announced). Any increase resets the timer."""
        if any(counts.get(k, 0) > self.last.get(k, 0) for k in set(counts) | set(self.last)):
            self.since = self.clock()
        self.last = {**self.last, **counts}

    def check(self) -> None:
        """StalledError when nothing moved for `stall_seconds`."""
        if self.clock() - self.since >= self.stall_seconds:
            raise self.error()

    def error(self) -> StalledError:
        """The error for the run as it stands (also when Ray Data's own guard ended it first)."""
        stalled = self.clock() - self.since
        stage = stuck_stage(self.last, self.total)
        return StalledError(
            f"the distributed run made no progress for {stalled:.0f} s: {WHAT[stage]} is stuck "
            f"({', '.join(f'{k} {self.last.get(k, 0)}' for k in ORDER)} of {self.total} files); committed "
            "work is kept, rerun the command to resume (see docs/cluster.md, pool sizing)", stage)


def stuck_stage(counts: dict[str, int], total: int) -> str:
    """The stage that has work waiting and does none of it. A stage upstream of a stuck one
    only looks stuck (backpressure holds it), so the search goes from the last stage back."""
    if counts.get("writing", 0):
        return "written"
    if not counts.get("actors", 0):  # no actor has loaded the model (unplaceable, or still loading)
        return "embedded"
    if counts.get("decoded", 0) > counts.get("embedded", 0):
        return "embedded"
    if counts.get("embedded", 0) > counts.get("received", 0):
        return "received"
    if counts.get("decoded", 0) < total:
        return "decoded"
    return "committed"
