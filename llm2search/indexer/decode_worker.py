"""The decode worker processes: each is `python -c "...decode_worker.serve()"` reading pickled
jobs (a task function, by reference, and its chunk of files) on stdin and writing pickled
results on stdout. A worker exits when its parent
does, however the parent died: its stdin reaches EOF, and on Linux the kernel also sends it
SIGKILL (PR_SET_PDEATHSIG). Nothing here imports the parent's __main__ or torch."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from ..errors import Llm2SearchError

_HEADER = struct.Struct("<Q")
WORKER_CODE = "from llm2search.indexer.decode_worker import serve; serve()"
READY = ("ready", None)


def _send(out: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def _receive(inp: BinaryIO) -> Any:
    """The next object, or None at EOF."""
    head = inp.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    size = _HEADER.unpack(head)[0]
    data = inp.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def serve() -> None:
    """The worker's loop: (job id, task, items, args) in, (job id, task(items, *args)) out,
    until EOF. The task arrives by reference (module and name) and is imported here."""
    _die_with_parent(int(os.environ.get("LLM2SEARCH_PARENT_PID", "0")))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt the result stream
    _send(out, READY)
    while True:
        job = _receive(inp)
        if job is None:
            return
        job_id, task, items, args = job
        _send(out, (job_id, task(items, *args)))


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: stdin EOF still ends us
            pass
    if parent and os.getppid() != parent:  # the parent died before the line above ran
        os._exit(0)


@dataclass
class _Worker:
    proc: subprocess.Popen
    jobs: dict[int, list[Any]] = field(default_factory=dict)  # sent, not yet answered
    alive: bool = True
    ready: bool = False  # it started and imported the decoder


class WorkerPool:
    """`workers` processes running `task(chunk, *args)` (a module-level function) on chunks of
    items, at most `read_ahead` chunks each; `crashed(item, exit_status)` is the result of an
    item that alone kills a worker."""

    def __init__(self, workers: int, task: Callable[..., list], args: tuple, crashed: Callable[[Any, int], Any]):
        self.task, self.args, self.crashed = task, args, crashed
        self.size = workers
        self._results: queue.Queue = queue.Queue()
        self._workers: list[_Worker] = []
        self._next_job = 0

    def __enter__(self) -> "WorkerPool":
        for _ in range(self.size):
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self._workers:
            if w.alive and w.proc.stdin:
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
        for w in self._workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()

    def _start(self) -> _Worker:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, LLM2SEARCH_PARENT_PID=str(os.getpid()))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, close_fds=True)
        worker = _Worker(proc)
        threading.Thread(target=self._read, args=(worker,), daemon=True, name="llm2search-decode-reader").start()
        self._workers.append(worker)
        return worker

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                message = _receive(worker.proc.stdout)  # type: ignore[arg-type]
            except (OSError, pickle.UnpicklingError, EOFError):
                message = None
            if message is None:
                self._results.put((worker, None, None))
                return
            self._results.put((worker, message[0], message[1]))

    def _submit(self, entries: list[Any]) -> bool:
        live = [w for w in self._workers if w.alive]
        if not live:
            return False
        worker = min(live, key=lambda w: len(w.jobs))
        job = self._next_job
        self._next_job += 1
        worker.jobs[job] = entries
        try:
            _send(worker.proc.stdin, (job, self.task, entries, self.args))  # type: ignore[arg-type]
        except (BrokenPipeError, OSError):
            pass  # the reader thread reports the death; the chunk is retried from worker.jobs
        return True

    def run(self, entries: Iterable[Any], chunk: int, read_ahead: int, min_in_flight: int = 0) -> Iterator[Any]:
        """Results in completion order; at most `read_ahead` chunks per worker in flight, or
        enough chunks for `min_in_flight` items if that is more."""
        source = iter(entries)
        retry: list[list[Any]] = []  # chunks of a crashed worker, one item each
        exhausted = False
        limit = max(self.size * read_ahead, -(-min_in_flight // chunk))
        while True:
            in_flight = sum(len(w.jobs) for w in self._workers if w.alive)
            while in_flight < limit:
                if retry:
                    batch = retry.pop()
                elif not exhausted:
                    batch = [e for _, e in zip(range(chunk), source)]
                    if not batch:
                        exhausted = True
                        continue
                else:
                    break
                self._submit(batch)
                in_flight += 1
            if in_flight == 0:
                return
            worker, job, results = self._results.get()
            if job == READY[0]:
                worker.ready = True
                continue
            if job is not None:
                worker.jobs.pop(job, None)
                yield from results
                continue
            # The worker died (a decoder crashed it, or it was killed): its files are retried
            # one per chunk in a fresh worker; a file that kills a worker alone is recorded.
            worker.alive = False
            code = worker.proc.wait()
            if not worker.ready:
                raise Llm2SearchError(
                    f"a decode worker process could not start (exit status {code}; its error is "
                    "printed above); rerun with --workers 0 to decode in this process")
            # A worker runs its jobs in the order sent: only the oldest one was running when it
            # died. Later ones never started and are retried, even when they hold one file.
            for n, (_, lost) in enumerate(sorted(worker.jobs.items())):
                if n == 0 and len(lost) == 1:
                    yield self.crashed(lost[0], code)
                else:
                    retry.extend([e] for e in lost)
            worker.jobs.clear()
            self._start()
