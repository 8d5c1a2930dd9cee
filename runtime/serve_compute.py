"""bnwvad-serve's batching: T buckets, and the one compute thread a replica runs its runner on.

Requests are grouped by their length T into buckets (powers of two from MIN_BUCKET up to the
bucket of --max-snippets); a bucket's batch holds at most what one runner call takes. Batches
run one at a time per replica on a ComputeQueue's thread, shortest bucket first, except that
one waiting longer than AGING_S runs next.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Callable

MIN_BUCKET = 16
AGING_S = 2.0                       # a batch waiting this long runs before shorter buckets' batches


def bucket_of(t: int, max_snippets: int) -> int:
    """The batch bucket of a video of T snippets: the power of two >= T (at least MIN_BUCKET),
    capped at the bucket of max_snippets."""
    top = 1 << max(0, (int(max_snippets) - 1).bit_length())
    b = 1 << max(0, (int(t) - 1).bit_length())
    return int(min(max(b, MIN_BUCKET), max(top, MIN_BUCKET)))


def bucket_batch_size(bucket: int, crops: int, max_batch: int, max_rows: int | None) -> int:
    """Videos per batch of a bucket: what one runner call takes (N * C * T <= max_rows where the
    backend has a row limit: CPU), at least 1, at most max_batch."""
    if max_rows is None:
        return max(1, int(max_batch))
    return int(max(1, min(max_batch, max_rows // max(1, crops * bucket))))


class ComputeQueue:
    """One thread that runs a replica's runner calls, one at a time: the lowest `priority`
    first (the T bucket: short videos first), except that a job waiting longer than `aging_s`
    runs next (oldest first), so none starves. `submit` is awaited from the event loop."""

    def __init__(self, aging_s: float = AGING_S, name: str = "bnwvad-compute"):
        self.aging_s = float(aging_s)
        self._cv = threading.Condition()
        self._jobs: list[tuple] = []
        self._seq = itertools.count()
        self._closed = False
        self.busy_s = 0.0
        self.jobs = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def submit(self, priority: float, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the compute thread is closed")
            self._jobs.append((priority, next(self._seq), time.monotonic(), fn, args, fut, loop))
            self._cv.notify()
        return await fut

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _pick(self):
        now = time.monotonic()
        oldest = min(self._jobs, key=lambda j: j[2])
        job = oldest if now - oldest[2] > self.aging_s else min(self._jobs, key=lambda j: (j[0], j[1]))
        self._jobs.remove(job)
        return job

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if self._closed and not self._jobs:
                    return
                _, _, _, fn, args, fut, loop = self._pick()
            t0 = time.perf_counter()
            try:
                result, error = fn(*args), None
            except BaseException as e:    # noqa: BLE001 - handed to the awaiting request
                result, error = None, e
            self.busy_s += time.perf_counter() - t0
            self.jobs += 1
            loop.call_soon_threadsafe(_settle, fut, result, error)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():                        # the request went away (client disconnected)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


__all__ = ["AGING_S", "ComputeQueue", "MIN_BUCKET", "bucket_batch_size", "bucket_of"]
