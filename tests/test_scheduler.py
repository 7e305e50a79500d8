"""The scheduler alone (no MLX): jobs in, futures out, with a NumPy runner whose vector for a row is known, so
every row can be checked to land in its job at its place, and every failure to fail exactly its jobs."""

import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, Future

import numpy as np
import pytest

from embedder.batching import BatchShape
from embedder.errors import NotReady
from embedder.scheduler import Scheduler

SHAPE = BatchShape(tokens=64, rows=4, attention=None, overhead_tokens=8)


class SumRunner:
    """A row's vector is (its length, its sum, its split); a row holding `poison` fails the batch it is in."""

    def __init__(self, poison: int | None = None, fail_in: str = "launch"):
        self.poison, self.fail_in, self.batches = poison, fail_in, 0

    def launch(self, rows, splits, per_token=False):
        self.batches += 1
        if self.fail_in == "launch" and any(self.poison in r for r in rows):
            raise RuntimeError("poisoned batch")
        return rows, splits

    def collect(self, launched):
        rows, splits = launched
        if self.fail_in == "collect" and any(self.poison in r for r in rows):
            raise RuntimeError("poisoned batch")
        return np.array([[len(r), sum(r), s] for r, s in zip(rows, splits)], np.float32)


def started(runner, lanes=2) -> Scheduler:
    scheduler = Scheduler(lanes, SHAPE)
    scheduler.start(lambda: runner)
    return scheduler


def want(rows, skip=0):
    return np.array([[len(r), sum(r), skip] for r in rows], np.float32)


def test_concurrent_jobs_each_get_their_own_rows_in_order():
    scheduler = started(SumRunner())
    rng = np.random.default_rng(0)
    jobs = [[list(rng.integers(1, 100, rng.integers(1, 30))) for _ in range(rng.integers(1, 12))] for _ in range(40)]
    futures: list[Future] = [None] * len(jobs)

    def submit(k):
        futures[k] = scheduler.submit(jobs[k], [k % 3] * len(jobs[k]), lambda out: out)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, rows in enumerate(jobs):
        np.testing.assert_array_equal(futures[k].result(timeout=60), want(rows, k % 3))
    stats = scheduler.stats()
    assert stats["rows"] == sum(map(len, jobs)) and stats["queue_depth"] == 0
    assert stats["tokens"] == sum(len(r) for rows in jobs for r in rows) <= stats["padded_tokens"]
    scheduler.stop()


@pytest.mark.parametrize("fail_in", ["launch", "collect"])
def test_a_failing_batch_fails_only_its_jobs(fail_in):
    scheduler = started(SumRunner(poison=-1, fail_in=fail_in), lanes=1)
    bad = scheduler.submit([[5, -1, 5]], [0], lambda out: out)
    with pytest.raises(RuntimeError, match="poisoned"):
        bad.result(timeout=60)
    good = scheduler.submit([[1, 2], [3]], [0, 0], lambda out: out)
    np.testing.assert_array_equal(good.result(timeout=60), want([[1, 2], [3]]))
    scheduler.stop()


def test_a_failing_finish_fails_its_job_not_the_lane():
    scheduler = started(SumRunner())
    broken = scheduler.submit([[1]], [0], lambda out: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        broken.result(timeout=60)
    np.testing.assert_array_equal(scheduler.submit([[4]], [0], lambda out: out).result(timeout=60), want([[4]]))
    scheduler.stop()


def test_an_open_failure_is_raised_by_start_and_start_can_retry():
    scheduler = Scheduler(2, SHAPE)
    with pytest.raises(OSError, match="no weights"):
        scheduler.start(lambda: (_ for _ in ()).throw(OSError("no weights")))
    scheduler.stop()
    scheduler.start(lambda: SumRunner())
    np.testing.assert_array_equal(scheduler.submit([[7]], [0], lambda out: out).result(timeout=60), want([[7]]))
    scheduler.stop()


def test_after_stop_new_work_is_refused_and_nothing_waits_forever():
    scheduler = started(SumRunner())
    done = scheduler.submit([[1, 2, 3]], [0], lambda out: out)
    scheduler.stop()
    np.testing.assert_array_equal(done.result(timeout=60), want([[1, 2, 3]]))  # queued before stop: it ran
    with pytest.raises(NotReady, match="call load"):
        scheduler.submit([[1]], [0], lambda out: out)


def gated_scheduler(sizes: list | None = None) -> tuple[Scheduler, threading.Event, threading.Event]:
    """One lane whose every launch waits for `gate` after setting `entered`: a batch held as long as a test needs.
    Each batch's row count is appended to `sizes`."""
    entered, gate = threading.Event(), threading.Event()

    class Gated(SumRunner):
        def launch(self, rows, splits, per_token=False):
            if sizes is not None:
                sizes.append(len(rows))
            entered.set()
            gate.wait(60)
            return super().launch(rows, splits)

    return started(Gated(), lanes=1), entered, gate


def test_a_cancelled_job_is_dropped_before_it_runs():
    """With the one lane held, the planner holds the next job until a lane is free, and a third job waits in the
    queue meanwhile: cancelling it drops it, and the others run."""
    scheduler, entered, gate = gated_scheduler()
    held = scheduler.submit([[1]], [0], lambda out: out)
    assert entered.wait(60)
    planned = scheduler.submit([[2]], [0], lambda out: out)
    _wait_for(lambda: scheduler.stats()["queue_depth"] == 0)  # the planner took it and waits for a free lane
    waiting = scheduler.submit([[3]], [0], lambda out: out)
    assert waiting.cancel()
    gate.set()
    for future, row in ((held, [1]), (planned, [2])):
        np.testing.assert_array_equal(future.result(timeout=60), want([row]))
    assert waiting.cancelled()
    scheduler.stop()


def test_a_job_cancelled_while_it_runs_launches_no_more_batches():
    """A server's client that hangs up mid-request: its job's rows that no lane has launched are dropped, its
    future ends cancelled, and the next job runs at once rather than after the abandoned rows."""
    runner_batches = []
    scheduler, entered, gate = gated_scheduler(runner_batches)
    rows = [[i] * 10 for i in range(5 * SHAPE.rows)]  # five batches of SHAPE.rows
    abandoned = scheduler.submit(rows, [0] * len(rows), lambda out: out)
    assert entered.wait(60)  # its first batch is with the lane
    assert not abandoned.cancel()  # too late for a plain Future's cancel...
    gate.set()
    with pytest.raises(CancelledError):  # ...but its remaining batches never launch
        abandoned.result(timeout=60)
    after = scheduler.submit([[7, 7]], [0], lambda out: out)
    np.testing.assert_array_equal(after.result(timeout=60), want([[7, 7]]))
    assert runner_batches == [SHAPE.rows, 1]
    scheduler.stop()


def test_jobs_that_arrive_while_the_lanes_are_busy_share_a_batch():
    """Small concurrent requests pack together: while the one lane runs a batch, the jobs that come in meanwhile
    wait for it and then go out as one batch, not one batch each."""
    scheduler, entered, gate = gated_scheduler()
    first = scheduler.submit([[1]], [0], lambda out: out)
    assert entered.wait(60)
    # all submitted while the lane is held: the planner holds or queues them, whenever it wakes
    later = [scheduler.submit([[2, i]], [0], lambda out: out) for i in range(SHAPE.rows)]
    gate.set()
    for i, future in enumerate([first, *later]):
        np.testing.assert_array_equal(future.result(timeout=60), want([[1]] if i == 0 else [[2, i - 1]]))
    assert scheduler.stats()["batches"] == 2  # the first job's, then the later ones' together
    scheduler.stop()


def test_jobs_are_split_over_the_idle_lanes_only():
    """With one of two lanes busy, a job's rows go out as one batch to the idle lane, not halved with one half
    queued behind the busy lane; a lone job on idle lanes is still halved, so every lane works on it."""
    entered, gate, sizes = threading.Event(), threading.Event(), []

    class Gated(SumRunner):
        def launch(self, rows, splits, per_token=False):
            sizes.append(len(rows))
            entered.set()
            gate.wait(60)
            return super().launch(rows, splits)

    scheduler = started(Gated(), lanes=2)
    held = scheduler.submit([[1]], [0], lambda out: out)
    assert entered.wait(60)
    rows = [[2, i] for i in range(SHAPE.rows)]
    later = scheduler.submit(rows, [0] * len(rows), lambda out: out)
    _wait_for(lambda: len(sizes) == 2)
    gate.set()
    np.testing.assert_array_equal(held.result(timeout=60), want([[1]]))
    np.testing.assert_array_equal(later.result(timeout=60), want(rows))
    assert sizes == [1, SHAPE.rows]
    sizes.clear()
    _wait_for(lambda: scheduler._idle_lanes == 2)  # both lanes back waiting: a job's results come before that
    assert scheduler.submit(rows, [0] * len(rows), lambda out: out).result(timeout=60).shape == (SHAPE.rows, 3)
    assert sizes == [SHAPE.rows // 2] * 2
    scheduler.stop()


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the scheduler never got there"
        time.sleep(0.001)


def test_the_scheduler_runs_without_mlx():
    code = "import sys, embedder.scheduler; assert not [m for m in sys.modules if m.startswith('mlx')]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
