"""Micro-batching: concurrent requests answered by one call over all of them.

Why: scoring one customer reads the whole item table (100,000 items x 64 floats, about 25 MB) to rank the
catalogue, and that read, not the arithmetic, is most of a forward's cost. B requests scored in one forward
read the table once instead of B times, so under load (FastAPI runs each `/v1/score` in a threadpool
thread) the requests that arrive within a few milliseconds of each other are gathered and scored together.

`MicroBatcher` knows nothing of models: it calls `fn(items) -> results` (one result per item, in order)
from one worker thread and hands each caller its own result. The caller's answer must not depend on which
other requests shared its batch. That is `fn`'s contract (every row of a forward is computed on its own;
note that float32 BLAS kernels can round a row differently for different block sizes, by about 1e-6:
`benchmarks/ranking.py` measures it), and the batcher keeps its own part of it: a batch that fails is
retried item by item, so that one bad request cannot fail the others. `forward_together`, at the end, is
the service's `fn`: one forward per model over every batch given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from features.encoder import EncodedBatch
from predictor.interface import InferenceUnit, Predictions

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosedError(RuntimeError):
    """The batcher was closed (or its worker stopped) before the item was scored."""


@dataclass(frozen=True)
class BatcherStats:
    """Counts since the batcher was made (a snapshot: later batches do not change it).

    Attributes:
        batches: calls of `fn` over a gathered batch (retries of single items not counted).
        items: items taken from the queue into batches.
        largest_batch: the most items one batch held.
        split_batches: batches that failed as a whole and were retried item by item.
        failed_items: items whose caller got an exception.
        cancelled_items: items whose caller gave up (timeout) while they were queued: never scored.
    """

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    split_batches: int = 0
    failed_items: int = 0
    cancelled_items: int = 0

    @property
    def mean_batch(self) -> float:
        """Items per batch on average (0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R]
    arrived: float  # time.monotonic() when submitted


class MicroBatcher(Generic[T, R]):
    """Gathers concurrent `submit` calls into batches and answers each from one call of `fn`.

    A daemon worker thread (started by the first `submit`, so that a batcher made before a fork has its
    worker in the process that uses it) takes the oldest queued item, then gathers more until
    `max_wait_s` has passed since that item arrived or `max_items` are gathered, whichever comes first,
    and calls `fn` once on the list. With `max_wait_s` 0 it takes only what is already queued: no
    request waits for company, and batches still form when requests queue up behind a running batch.

    Errors: if `fn` raises on a batch of several items, each item is retried alone, so each caller gets
    its own result or its own exception. If `fn` returns a number of results other than the number of
    items, no result can be trusted to belong to its caller: every caller of that batch gets a
    `ValueError`.

    Args:
        fn: scores a list of items, returning one result per item, in order. Called from the worker
            thread only, never concurrently with itself.
        max_wait_s: the longest the first item of a batch waits for others (seconds, >= 0).
        max_items: the most items in one batch (>= 1).
        name: names the worker thread and the log lines.
        coming: how many callers are on their way to `submit` (None: unknown). A batch stops waiting as
            soon as none is: a lone request under light load is not held for company that will not come.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        max_wait_s: float,
        max_items: int,
        name: str,
        coming: Callable[[], int] | None = None,
    ) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.fn = fn
        self.max_wait_s = max_wait_s
        self.max_items = max_items
        self.name = name
        self.coming = coming
        self._queue: deque[_Pending[T, R]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._stats = BatcherStats()

    # -- callers ----------------------------------------------------------------------------------------
    def submit(self, item: T, timeout: float | None = None) -> R:
        """Scores `item` in the next batch and returns its result (blocks until then).

        Args:
            item: what `fn` takes one of.
            timeout: the most seconds to wait (None: no limit). An item still queued when its caller gives
                up is never scored; one already in a running batch is scored and its result dropped.

        Raises:
            BatcherClosedError: the batcher is closed, or was closed before the item was scored.
            TimeoutError: no result within `timeout`.
            Exception: whatever `fn` raised on this item alone; `ValueError` if `fn` returned the wrong
                number of results for its batch.
        """
        future: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError(f"batcher {self.name!r} is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
                self._worker.start()
            self._queue.append(_Pending(item, future, time.monotonic()))
            self._cond.notify()
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # succeeds only while the item is queued: the worker then skips it
            raise

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the worker and fails every queued caller with `BatcherClosedError`.

        A batch already handed to `fn` is finished and answered (a running call cannot be interrupted);
        `close` waits up to `timeout_s` for it. Idempotent.
        """
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            worker = self._worker
        for p in pending:
            if p.future.set_running_or_notify_cancel():  # False: its caller gave up already
                p.future.set_exception(
                    BatcherClosedError(f"batcher {self.name!r} closed before scoring the item")
                )
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch being scored)."""
        with self._cond:
            return len(self._queue)

    @property
    def stats(self) -> BatcherStats:
        """A snapshot of the counts so far."""
        with self._cond:
            return self._stats

    # -- the worker -------------------------------------------------------------------------------------
    def _run(self) -> None:
        batch: list[_Pending[T, R]] | None = []
        try:
            while True:
                batch = self._gather()
                if batch is None:
                    return
                if batch:
                    self._score(batch)
        finally:
            # Whatever stopped the worker (close, or an error that escaped `_score`, such as a
            # BaseException from `fn`), no caller may wait for ever: the batch in hand is failed, and the
            # batcher closes and fails what is queued.
            unanswered = [p for p in batch or [] if not p.future.done()]
            if unanswered or not self._closed:
                log.error("batcher %r: worker stopped unexpectedly; closing", self.name)
            for p in unanswered:
                p.future.set_exception(BatcherClosedError(f"batcher {self.name!r}: worker stopped"))
            self.close(timeout_s=0.0)

    def _gather(self) -> list[_Pending[T, R]] | None:
        """Waits for an item, then for more until the first one's deadline or `max_items`; None: closed.

        Items whose caller gave up (timeout) are dropped here, so the batch may come out empty.
        """
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].arrived + self.max_wait_s
            while len(self._queue) < self.max_items and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or (self.coming is not None and self.coming() <= 0):
                    break
                self._cond.wait(min(left, 0.0005) if self.coming is not None else left)
            if self._closed:
                return None
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_items))]
            # Marked running, a future can no longer be cancelled by its caller's timeout.
            batch = [p for p in taken if p.future.set_running_or_notify_cancel()]
            n = len(batch)
            self._stats = replace(
                self._stats,
                batches=self._stats.batches + int(n > 0),
                items=self._stats.items + n,
                largest_batch=max(self._stats.largest_batch, n),
                cancelled_items=self._stats.cancelled_items + len(taken) - n,
            )
            return batch

    def _score(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = list(self.fn([p.item for p in batch]))
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, [exc])
                return
            log.warning(
                "batcher %r: a batch of %d failed (%r); retrying item by item", self.name, len(batch), exc
            )
            self._count(split_batches=1)
            for p in batch:
                self._score_alone(p)
            return
        if len(results) != len(batch):
            message = f"batcher {self.name!r}: fn returned {len(results)} results for {len(batch)} items"
            self._fail(batch, [ValueError(message) for _ in batch])
            return
        for p, r in zip(batch, results, strict=True):
            p.future.set_result(r)

    def _score_alone(self, p: _Pending[T, R]) -> None:
        try:
            results = list(self.fn([p.item]))
        except Exception as exc:
            self._fail([p], [exc])
            return
        if len(results) != 1:
            message = f"batcher {self.name!r}: fn returned {len(results)} results for 1 item"
            self._fail([p], [ValueError(message)])
            return
        p.future.set_result(results[0])

    def _fail(self, batch: list[_Pending[T, R]], errors: list[BaseException]) -> None:
        """Gives each caller of `batch` its exception: one object per caller, since an exception raised in
        several threads at once would collect all their tracebacks."""
        self._count(failed_items=len(batch))
        for p, exc in zip(batch, errors, strict=True):
            p.future.set_exception(exc)

    def _count(self, **more: int) -> None:
        with self._cond:
            self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in more.items()})


# ---------------------------------------------------------------------------------------------------------
# The service's batched call: one forward per model


def _concat_batches(batches: Sequence[EncodedBatch]) -> EncodedBatch:
    return EncodedBatch.concat(list(batches))


def forward_together(items: list[tuple[InferenceUnit, EncodedBatch, int]]) -> list[Predictions]:
    """One forward per model over every batch given (the micro-batcher's function); each batch gets its
    own rows and its own number of items back."""
    out: list[Predictions | None] = [None] * len(items)
    by_model: dict[int, list[int]] = {}
    for j, (predictor, _, _) in enumerate(items):
        by_model.setdefault(id(predictor), []).append(j)
    for positions in by_model.values():
        predictor = items[positions[0]][0]
        batches = [items[j][1] for j in positions]
        pred = predictor.score(_concat_batches(batches), max(items[j][2] for j in positions))
        lo = 0
        for j, batch in zip(positions, batches, strict=True):
            out[j] = pred.rows(lo, lo + len(batch), items[j][2])
            lo += len(batch)
    return [p for p in out if p is not None]
