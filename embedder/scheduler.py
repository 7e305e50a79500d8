"""The engine's scheduling, without MLX: a queue of jobs, a planner that packs their rows into batches, lanes that
run batches through a `BatchRunner`, and the stats of it all.

One planner thread opens the runner (loads the model), then packs whatever jobs are waiting into token-budget
batches (`batching.plan_batches`) and hands them to `lanes` lane threads through a queue as long as the lanes. It
plans again only once a lane waits for work: until then, new jobs wait and pack together (64 concurrent one-text
requests ran in batches of 7.7 rows before, at 187 texts/s; 202 after). Each lane launches a batch while its
previous one computes,
and resolves a job's future when its last row is done. Any failure fails exactly the jobs it touches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .batching import BatchShape, plan_batches, spread
from .errors import NotReady


class BatchRunner(Protocol):
    """The forward pass the lanes call: `launch` starts a batch (asynchronously where it can), `collect` waits
    for it and returns its (rows, dim) float32 vectors, or raises; with `per_token`, each token's vector instead,
    (rows, longest, dim) with the padding after each row's own tokens."""

    def launch(self, rows: list[list[int]], splits: list[int], per_token: bool = False) -> Any: ...

    def collect(self, launched: Any) -> np.ndarray: ...


class JobFuture(Future):
    """A job's future. Cancelling it also works once the job runs, unlike a plain Future's: the rows no lane has
    launched yet are dropped, and the future ends cancelled (a server's client that hung up mid-request must not
    keep the lanes busy for everyone after it)."""

    abandoned = False

    def cancel(self) -> bool:
        self.abandoned = True
        return super().cancel()


@dataclass
class Job:
    """One submit: its rows are batched with other jobs' rows, its result assembled in input order."""

    ids: list[list[int]]
    splits: list[int]  # per row, where its leading part ends: a prompt pooling leaves out, or a pair's first text
    finish: Callable[[Any], Any]  # the assembled (rows, dim) vectors (per_token: a list) to the caller's result
    per_token: bool = False  # each token's vector, (tokens, dim) per row, not one pooled vector per row
    future: JobFuture = field(default_factory=JobFuture)
    out: np.ndarray | list[np.ndarray] | None = None
    error: BaseException | None = None
    remaining: int = field(init=False)  # rows not yet done (or failed); the lane taking it to 0 resolves the future

    def __post_init__(self) -> None:
        self.remaining = len(self.ids)


Batch = list[tuple[Job, int]]  # (job, row) pairs
_STOP = object()


class Scheduler:
    """Jobs in, futures out; `start` opens the runner in the planner thread, `stop` drains and ends the threads."""

    def __init__(self, lanes: int, batch_shape: BatchShape, thread_exit: Callable[[], None] = lambda: None):
        self.lanes, self.batch_shape = lanes, batch_shape
        self._thread_exit = thread_exit  # run by each thread as it ends (MLX: release its streams)
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._batches: queue.Queue = queue.Queue(maxsize=lanes)
        self._thread: threading.Thread | None = None
        self._ready: Future | None = None
        self._runner: BatchRunner | None = None
        self._stats = dict(queue_depth=0, batches=0, rows=0, tokens=0, padded_tokens=0, busy_seconds=0.0,
                           lanes=lanes)
        self._running = 0  # batches launched and not yet done, over all lanes
        self._busy_since = 0.0
        self._idle = threading.Condition()  # lanes waiting for a batch, counted in _idle_lanes
        self._idle_lanes = 0

    def start(self, open_runner: Callable[[], BatchRunner]) -> None:
        """Start the threads, unless running; `open_runner` runs in the planner thread. Raises its error."""
        with self._lock:
            if self._ready is None:
                self._ready = Future()
                self._queue, self._batches = queue.Queue(), queue.Queue(maxsize=self.lanes)  # nothing left over
                self._thread = threading.Thread(target=self._plan, args=(open_runner,), name="embed-engine",
                                                daemon=True)
                self._thread.start()
            ready = self._ready
        ready.result()

    def stop(self) -> None:
        """Run the work already queued, then end the threads; jobs queued after that fail."""
        with self._lock:
            thread, self._thread, self._ready = self._thread, None, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def submit(self, ids: list[list[int]], splits: list[int], finish: Callable[[Any], Any],
               per_token: bool = False) -> Future:
        job = Job(ids, splits, finish, per_token)
        with self._lock:
            if self._thread is None:
                raise NotReady("the engine is not running; call load()")
            self._stats["queue_depth"] += len(ids)
        self._queue.put(job)
        return job.future

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    # ---- the planner ------------------------------------------------------------------------

    def _plan(self, open_runner: Callable[[], BatchRunner]) -> None:
        try:
            try:
                self._runner = open_runner()
            except BaseException as e:  # handed to start()'s caller, whatever it is
                self._ready.set_exception(e)
                return
            self._serve()
        finally:
            self._runner = None
            self._thread_exit()

    def _serve(self) -> None:
        lanes = [threading.Thread(target=self._run_lane, name=f"embed-lane-{i}", daemon=True)
                 for i in range(self.lanes)]
        for lane in lanes:
            lane.start()
        self._ready.set_result(None)
        try:
            stopping = False
            while not stopping:
                jobs, idle = self._take(self._queue.get()), self.lanes
                if not any(j is _STOP for j in jobs):
                    # While every lane has work, more jobs arrive: they are taken too, so that concurrent small
                    # requests pack into batches of many rows instead of a batch each (each pays a pass's fixed cost).
                    with self._idle:
                        self._idle.wait_for(lambda: self._idle_lanes > 0)
                        idle = self._idle_lanes
                    jobs += self._take()
                stopping = any(j is _STOP for j in jobs)
                jobs = [j for j in jobs if j is not _STOP]
                running = [j for j in jobs if j.future.set_running_or_notify_cancel()]
                try:
                    self._dispatch(running, idle)
                except BaseException as e:  # fail exactly these jobs; the planner lives on
                    self._fail(running, e)
        finally:
            for _ in lanes:
                self._batches.put(_STOP)
            for lane in lanes:
                lane.join()
            self._fail_waiting(NotReady("the engine stopped before this work ran"))

    def _take(self, *first: Job | object) -> list:
        """`first` and every job already waiting: they ride in the same batches."""
        jobs = list(first)
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self._stats["queue_depth"] -= sum(len(j.ids) for j in jobs if j is not _STOP)
        return jobs

    def _dispatch(self, jobs: list[Job], idle: int) -> None:
        """Plan the jobs' rows into batches, split over the `idle` lanes, and queue them (blocks while the lanes are
        busy). Split over idle lanes only: half a batch queued for a busy lane would run later at half size, while
        the jobs arriving meanwhile wait for the next plan. Pooled and per-token rows never share a batch."""
        for per_token in (False, True):
            rows = [(job, r) for job in jobs if job.per_token == per_token for r in range(len(job.ids))]
            for batch in spread(plan_batches([len(job.ids[r]) for job, r in rows], self.batch_shape), idle):
                self._batches.put([rows[i] for i in batch])

    def _fail(self, jobs: list[Job], error: BaseException) -> None:
        """Resolve these jobs with `error` now; their batches already with a lane find them resolved."""
        with self._lock:
            for job in jobs:
                job.error = job.error or error
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _fail_waiting(self, error: BaseException) -> None:
        """Jobs still queued when the planner stops (a bug, or stop racing a submit) must not wait forever."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                self._fail([job], error)

    # ---- the lanes --------------------------------------------------------------------------

    def _run_lane(self) -> None:
        """Launch a batch while this lane's previous one computes; collect it before idling."""
        in_flight = None
        try:
            while True:
                try:
                    batch = self._batches.get_nowait() if in_flight is not None else self._wait_for_batch()
                except queue.Empty:
                    self._collect(*in_flight)
                    in_flight = None
                    continue
                if batch is _STOP:
                    break
                batch = self._drop_abandoned(batch)
                if not batch:
                    continue
                self._started()
                try:
                    launched = (batch, self._runner.launch([job.ids[r] for job, r in batch],
                                                           [job.splits[r] for job, r in batch], batch[0][0].per_token))
                except BaseException as e:  # fail only the jobs in this batch; the lane lives on
                    self._done(batch, e)
                    launched = None
                if in_flight is not None:
                    self._collect(*in_flight)
                in_flight = launched
            if in_flight is not None:
                self._collect(*in_flight)
        finally:
            self._thread_exit()

    def _wait_for_batch(self) -> Batch | object:
        """Block for the next batch, counted as an idle lane meanwhile (the planner dispatches when one waits)."""
        with self._idle:
            self._idle_lanes += 1
            self._idle.notify_all()
        try:
            return self._batches.get()
        finally:
            with self._idle:
                self._idle_lanes -= 1

    def _collect(self, batch: Batch, launched: Any) -> None:
        """Wait for a launched batch and copy each row into its job's output."""
        try:
            out = self._runner.collect(launched)
        except BaseException as e:
            self._done(batch, e)
            return
        lengths = [len(job.ids[r]) for job, r in batch]
        with self._lock:  # a job's rows may come from several lanes
            for (job, r), v in zip(batch, out):
                if job.per_token:  # its own tokens, copied out of the padded batch
                    job.out = [None] * len(job.ids) if job.out is None else job.out
                    job.out[r] = v[:len(job.ids[r])].copy()
                    continue
                if job.out is None:
                    job.out = np.empty((len(job.ids), out.shape[1]), np.float32)
                job.out[r] = v
            s = self._stats
            s["batches"] += 1
            s["rows"] += len(batch)
            s["tokens"] += sum(lengths)
            s["padded_tokens"] += len(batch) * max(lengths)
        self._done(batch)

    def _drop_abandoned(self, batch: Batch) -> Batch:
        """The batch less the rows of jobs whose caller cancelled them while they ran; those rows count as done."""
        dropped = [job.future.abandoned for job, _ in batch]
        if not any(dropped):
            return batch
        finished = []
        with self._lock:
            for (job, _), drop in zip(batch, dropped):
                if drop:
                    job.remaining -= 1
                    if job.remaining == 0:
                        finished.append(job)
        for job in finished:
            self._resolve(job)
        return [row for row, drop in zip(batch, dropped) if not drop]

    def _started(self) -> None:
        with self._lock:
            if self._running == 0:
                self._busy_since = time.perf_counter()
            self._running += 1

    def _done(self, batch: Batch, error: BaseException | None = None) -> None:
        """Count a batch's rows off their jobs; resolve each job whose last row this was."""
        finished = []
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._stats["busy_seconds"] += time.perf_counter() - self._busy_since
            for job, _ in batch:
                job.error = job.error or error
                job.remaining -= 1
                if job.remaining == 0:
                    finished.append(job)
        for job in finished:
            self._resolve(job)

    @staticmethod
    def _resolve(job: Job) -> None:
        """A job whose last row is done (or dropped): its result, its error, or cancelled."""
        if job.future.done():  # already failed by the planner
            return
        if job.future.abandoned:
            job.future.set_exception(CancelledError())
        elif job.error is not None:
            job.future.set_exception(job.error)
        else:
            try:
                job.future.set_result(job.finish(job.out))
            except BaseException as e:
                job.future.set_exception(e)
