"""Requests that wait for the model are embedded together: one model call for all of them."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np


class Batcher:
    """Runs `fn` on the inputs of all callers waiting for the model, in one call. No thread of its
    own: the caller that gets the model lock embeds everything queued so far (up to `max_items`);
    the others find their result ready when they get the lock."""

    def __init__(self, fn: Any, model_lock: threading.Lock, max_items: int):
        self._fn = fn
        self._model_lock = model_lock
        self._max = max_items
        self._queue: list[tuple[Any, Future]] = []
        self._queue_lock = threading.Lock()

    def __call__(self, items: Any) -> np.ndarray:
        done: Future = Future()
        with self._queue_lock:
            self._queue.append((items, done))
        while not done.done():
            with self._model_lock:
                if done.done():
                    break
                with self._queue_lock:
                    batch, size = [], 0
                    while self._queue and (not batch or size + len(self._queue[0][0]) <= self._max):
                        batch.append(self._queue.pop(0))
                        size += len(batch[-1][0])
                self._run(batch)
        return done.result()

    def _run(self, batch: list[tuple[Any, Future]]) -> None:
        try:
            joined = np.concatenate(list(items for items, _ in batch)) if len(batch) > 1 else batch[0][0]
            out = self._fn(joined)
        except Exception:  # noqa: BLE001 - one bad input must not fail the others: run them alone
            if len(batch) == 1:
                _, fut = batch[0]
                try:
                    fut.set_result(self._fn(batch[0][0]))
                except Exception as e:  # noqa: BLE001
                    fut.set_exception(e)
                return
            for one in batch:
                self._run([one])
            return
        start = 0
        for items, fut in batch:
            fut.set_result(out[start:start + len(items)])
            start += len(items)
