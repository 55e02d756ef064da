"""The micro-batcher with real threads: each caller gets its own answer, batches form and respect their
bounds, one bad item fails only its own caller, and close leaves nobody waiting.

Timing bounds are generous: the machine's cores are shared, so a thread may be descheduled for a while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from serving.batching import BatcherClosedError, BatcherStats, MicroBatcher

WAIT = 10.0  # the longest any test waits for a result before calling it a hang


class Recorder:
    """`fn` for the batcher: doubles each item and records the batches it was called with."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate  # if set, the first call waits for it (holds the worker busy)

    def __call__(self, items: list[int]) -> list[int]:
        if self.gate is not None and not self.batches:
            self.batches.append(list(items))
            assert self.gate.wait(WAIT)
        else:
            self.batches.append(list(items))
        return [2 * x for x in items]


def submit_all(batcher: MicroBatcher[int, int], items: list[int]) -> list[Future[int]]:
    """Submits every item from its own thread, all released at once by a barrier."""
    barrier = threading.Barrier(len(items))

    def call(x: int) -> int:
        barrier.wait(WAIT)
        return batcher.submit(x)

    pool = ThreadPoolExecutor(len(items))
    futures = [pool.submit(call, x) for x in items]
    pool.shutdown(wait=False)
    return futures


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_concurrent_callers_get_their_own_answers_in_fewer_batches() -> None:
    fn = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.05, max_items=64, name="t")
    items = list(range(16))
    futures = submit_all(batcher, items)
    assert [f.result(WAIT) for f in futures] == [2 * x for x in items]
    stats = batcher.stats
    assert stats.items == 16
    assert stats.batches == len(fn.batches) < 16
    assert sorted(x for b in fn.batches for x in b) == items
    assert stats.largest_batch == max(len(b) for b in fn.batches) > 1
    batcher.close()


def test_a_full_batch_goes_at_once_without_waiting_for_the_deadline() -> None:
    fn = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=30.0, max_items=16, name="t")
    start = time.monotonic()
    futures = submit_all(batcher, list(range(16)))
    assert [f.result(WAIT) for f in futures] == [2 * x for x in range(16)]
    assert time.monotonic() - start < WAIT  # far below the 30 s wait: max_items came first
    assert len(fn.batches) == 1
    assert batcher.stats == BatcherStats(batches=1, items=16, largest_batch=16)
    batcher.close()


def test_max_items_is_respected() -> None:
    fn = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.2, max_items=4, name="t")
    futures = submit_all(batcher, list(range(22)))
    assert [f.result(WAIT) for f in futures] == [2 * x for x in range(22)]
    assert all(1 <= len(b) <= 4 for b in fn.batches)
    assert batcher.stats.largest_batch <= 4
    assert batcher.stats.batches >= 6  # 22 items, at most 4 a batch
    batcher.close()


def test_a_lone_request_waits_about_max_wait_s() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_wait_s=0.2, max_items=8, name="t")
    batcher.submit(0)  # starts the worker thread, so that the timing below is the wait alone
    start = time.monotonic()
    assert batcher.submit(21) == 42
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 0.2 + 1.0
    batcher.close()


def test_max_wait_zero_takes_only_what_is_queued() -> None:
    # A lone request does not wait; requests that queue up behind a running batch go together.
    gate = threading.Event()
    fn = Recorder(gate)
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.0, max_items=8, name="t")
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.submit, 0)
        wait_until(lambda: len(fn.batches) == 1)  # the worker is inside fn, held by the gate
        rest = [pool.submit(batcher.submit, x) for x in range(1, 6)]
        wait_until(lambda: batcher.queued == 5)
        gate.set()
        assert first.result(WAIT) == 0
        assert [f.result(WAIT) for f in rest] == [2, 4, 6, 8, 10]
    assert len(fn.batches) == 2
    assert fn.batches[0] == [0]
    assert sorted(fn.batches[1]) == [1, 2, 3, 4, 5]
    start = time.monotonic()
    assert batcher.submit(7) == 14
    assert time.monotonic() - start < 1.0
    batcher.close()


def test_one_bad_item_fails_only_its_own_caller() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        bad = [x for x in items if x < 0]
        if bad:
            raise ValueError(f"negative item {bad[0]}")
        return [10 * x for x in items]

    items = [1, -1, 2, 3, -2, 4, 5, 6]
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=30.0, max_items=len(items), name="t")
    futures = submit_all(batcher, items)
    for x, f in zip(items, futures, strict=True):
        if x < 0:
            with pytest.raises(ValueError, match=f"negative item {x}$"):
                f.result(WAIT)
        else:
            assert f.result(WAIT) == 10 * x
    assert len(calls[0]) == len(items)  # one batch of all, then each item alone
    assert sorted(len(c) for c in calls[1:]) == [1] * len(items)
    stats = batcher.stats
    assert (stats.batches, stats.items, stats.split_batches, stats.failed_items) == (1, 8, 1, 2)
    batcher.close()


def test_many_callers_with_some_bad_items_each_get_their_own_answer() -> None:
    def fn(items: list[int]) -> list[int]:
        if any(x % 7 == 0 for x in items):
            raise ValueError("multiple of 7")
        return [x * x for x in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.002, max_items=8, name="t")

    def call(x: int) -> int | str:
        try:
            return batcher.submit(x)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(1, 301), timeout=WAIT))
    assert answers == [("multiple of 7" if x % 7 == 0 else x * x) for x in range(1, 301)]
    stats = batcher.stats
    assert stats.items == 300
    assert stats.failed_items == 300 // 7
    assert stats.largest_batch <= 8
    batcher.close()


def test_the_wrong_number_of_results_fails_every_caller_of_the_batch() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs[:-1], max_wait_s=30.0, max_items=3, name="t")
    futures = submit_all(batcher, [1, 2, 3])
    errors = []
    for f in futures:
        with pytest.raises(ValueError, match="returned 2 results for 3 items"):
            f.result(WAIT)
        errors.append(f.exception())
    assert len({id(e) for e in errors}) == 3  # each caller its own exception object
    assert batcher.stats.failed_items == 3
    batcher.close()


def test_close_fails_queued_callers_finishes_the_running_batch_and_refuses_more() -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.0, max_items=8, name="scorer")
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.submit, 1)
        wait_until(lambda: len(fn.batches) == 1)
        queued = [pool.submit(batcher.submit, x) for x in (2, 3, 4)]
        wait_until(lambda: batcher.queued == 3)
        batcher.close(timeout_s=0.05)  # the worker is still held inside fn
        for f in queued:
            with pytest.raises(BatcherClosedError, match="'scorer' closed before scoring"):
                f.result(WAIT)
        gate.set()
        assert running.result(WAIT) == 2  # the batch already handed to fn is answered
    assert batcher.closed
    with pytest.raises(BatcherClosedError, match="'scorer' is closed"):
        batcher.submit(5)
    batcher.close()  # idempotent
    worker = batcher._worker
    assert worker is not None
    worker.join(WAIT)
    assert not worker.is_alive()


def test_close_before_any_submit_starts_no_thread() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_wait_s=0.01, max_items=2, name="t")
    batcher.close()
    assert batcher._worker is None
    with pytest.raises(BatcherClosedError):
        batcher.submit(1)


def test_a_caller_that_gives_up_is_never_scored_and_others_go_on() -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.0, max_items=8, name="t")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(batcher.submit, 1)
        wait_until(lambda: len(fn.batches) == 1)  # the worker is held inside fn
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            batcher.submit(2, timeout=0.05)
        assert time.monotonic() - start < 1.0
        gate.set()
        assert running.result(WAIT) == 2
    assert batcher.submit(3, timeout=WAIT) == 6
    assert fn.batches == [[1], [3]]  # item 2 was dropped from the queue, never scored
    stats = batcher.stats
    assert (stats.batches, stats.items, stats.cancelled_items) == (2, 2, 1)
    batcher.close()


class Fatal(BaseException):
    """Not an Exception: escapes `fn`'s error handling and stops the worker."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_leaves_nobody_waiting() -> None:
    def fn(items: list[int]) -> list[int]:
        raise Fatal

    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_wait_s=0.0, max_items=4, name="t")
    with pytest.raises(BatcherClosedError, match="worker stopped"):
        batcher.submit(1)
    worker = batcher._worker
    assert worker is not None
    worker.join(WAIT)  # inside the test, so that its warning about the thread's exception is filtered
    assert batcher.closed
    with pytest.raises(BatcherClosedError):
        batcher.submit(2)


def test_stats_are_a_snapshot_and_give_the_mean_batch() -> None:
    assert BatcherStats().mean_batch == 0.0
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_wait_s=30.0, max_items=4, name="t")
    before = batcher.stats
    for f in submit_all(batcher, [1, 2, 3, 4]):
        f.result(WAIT)
    assert before == BatcherStats()
    assert batcher.stats.mean_batch == 4.0
    batcher.close()


@pytest.mark.parametrize(("max_wait_s", "max_items"), [(-0.1, 4), (0.0, 0)])
def test_bad_settings_are_refused(max_wait_s: float, max_items: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        MicroBatcher(Recorder(), max_wait_s=max_wait_s, max_items=max_items, name="t")


def test_a_lone_item_does_not_wait_when_no_one_else_is_coming() -> None:
    coming = [0]
    batcher = MicroBatcher(
        lambda items: items, max_wait_s=5.0, max_items=8, name="coming", coming=lambda: coming[0]
    )
    try:
        started = time.monotonic()
        assert batcher.submit(1) == 1
        assert time.monotonic() - started < 2.0  # not held for the 5 s wait
        # With another caller on its way, the first waits for it and both share a batch.
        coming[0] = 1
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(batcher.submit(2)))
        first.start()
        time.sleep(0.2)
        coming[0] = 0
        results.append(batcher.submit(3))
        first.join()
        assert sorted(results) == [2, 3]
        assert batcher.stats.largest_batch == 2
    finally:
        batcher.close()
