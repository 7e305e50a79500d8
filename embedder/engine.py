"""EmbeddingEngine: the one place where text becomes vectors; a single worker thread owns MLX."""

import atexit
import dataclasses
import os
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from .blas import preload_blas, set_threads

preload_blas()  # must run before mlx.core is first imported

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from .batching import CPU_BATCH, GPU_BATCH, plan_batches, spread  # noqa: E402
from .cpu_compile import native_build_env  # noqa: E402
from .errors import InputError, ModelError, NotReady  # noqa: E402
from .hub import DEFAULT_MODEL, canonical_id  # noqa: E402
from .loading import LoadedModel, load_model  # noqa: E402
from .pooling import normalize as l2_normalize  # noqa: E402
from .pooling import pool, truncate_dims  # noqa: E402

__all__ = ["EmbeddingEngine", "DEFAULT_MODEL"]


@dataclass
class _Job:
    """One submit(): its rows are batched with other jobs' rows, its result assembled in input order."""

    ids: list[list[int]]
    dimensions: int | None
    normalize: bool
    skip: int  # leading tokens left out of pooling (a prompt, when the model pools without it)
    future: Future = field(default_factory=Future)
    out: np.ndarray | None = None
    error: BaseException | None = None
    remaining: int = field(init=False)  # rows not yet done (or failed); the lane taking it to 0 resolves the future

    def __post_init__(self) -> None:
        self.remaining = len(self.ids)


_STOP = object()
_LIVE_ENGINES: "weakref.WeakSet[EmbeddingEngine]" = weakref.WeakSet()
MAX_CPU_LANES = 8


def default_lanes() -> int:
    """A GPU runs one batch at a time. On a CPU, MLX runs a stream's element-wise kernels on one core, so one
    lane per core, each with a one-thread BLAS, keeps every core busy (2 cores, passages: +15% over one lane
    with a two-thread BLAS; short sentences: the same)."""
    return 1 if mx.default_device() == mx.gpu else min(_cores(), MAX_CPU_LANES)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@atexit.register
def _stop_all() -> None:
    """MLX aborts at exit if a thread still holds its streams (ml-explore/mlx#3126): stop workers first."""
    for engine in list(_LIVE_ENGINES):
        engine.unload()
    mx.clear_streams()


class EmbeddingEngine:
    """Tokenize, queue, batch by padded-token budget, run, pool; concurrent submits share batches."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        max_batch_rows: int | None = None,
        dtype: str | None = None,
        normalize: bool | None = None,
        pooling: str | None = None,
        prompt: str | None = None,
        truncate: bool = True,
        lanes: int | None = None,
    ):
        if lanes is not None and lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.model_name = model
        self.lanes = lanes or default_lanes()
        shape = GPU_BATCH if mx.default_device() == mx.gpu else CPU_BATCH
        self.batch_shape = dataclasses.replace(
            shape, tokens=batch_tokens or shape.tokens, rows=max_batch_rows or shape.rows
        )
        self.default_prompt = prompt
        self._options = dict(
            max_length=max_length, batch_tokens=self.batch_shape.tokens, dtype=dtype, pooling=pooling,
            truncate=truncate,
        )
        self._normalize = normalize
        self._model: LoadedModel | None = None
        self._queue: queue.Queue = queue.Queue()
        self._batches: queue.Queue = queue.Queue(maxsize=self.lanes)  # full: new jobs wait and pack together
        self._thread: threading.Thread | None = None
        self._ready: Future | None = None
        self._lock = threading.Lock()
        self._stats = dict(queue_depth=0, batches=0, rows=0, tokens=0, padded_tokens=0, busy_seconds=0.0,
                           lanes=self.lanes)
        self._running = 0  # batches launched and not yet done, over all lanes
        self._busy_since = 0.0
        self._unloaded = False  # by unload(): new work is refused until load() is called again

    # ---- life cycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Start the worker thread and load the model in it; raises the load error, if any."""
        with self._lock:
            self._unloaded = False
            if self._ready is None:
                self._ready = Future()
                self._queue, self._batches = queue.Queue(), queue.Queue(maxsize=self.lanes)  # nothing left over
                self._thread = threading.Thread(target=self._work, name="embed-engine", daemon=True)
                self._thread.start()
                _LIVE_ENGINES.add(self)
            ready = self._ready
        ready.result()

    def unload(self) -> None:
        """Stop the worker after the work already queued; until load() is called again, new work is refused."""
        with self._lock:
            thread, self._thread, self._ready = self._thread, None, None
            self._unloaded = True
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()
        self._model = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        """The loaded model; the first use loads it, but an unloaded engine refuses until load() is called."""
        if self._unloaded:
            raise NotReady("the engine was unloaded; call load() to use it again")
        self.load()
        if self._model is None:
            raise NotReady("the engine was unloaded")
        return self._model

    @property
    def model_id(self) -> str:
        return self._model.model_id if self._model else canonical_id(self.model_name)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def max_length(self) -> int:
        return self.model.max_length

    @property
    def vocab_size(self) -> int:
        return self.model.tokenizer.vocab_size

    @property
    def normalizes(self) -> bool:
        return self.model.spec.normalize if self._normalize is None else self._normalize

    def info(self) -> dict:
        """What the model is and what embed does with it: for file metadata, /v1/models and `embed models`."""
        m = self.model
        return {
            "model": m.model_id,
            "path": str(m.path),
            "architecture": m.architecture,
            "dim": m.dim,
            "max_length": m.max_length,
            "pooling": "+".join(m.spec.pooling),
            "dense_layers": len(m.dense),
            "normalize": self.normalizes,
            "dtype": m.dtype,
            "quantization": m.quantization,
            "prompts": m.spec.prompts,
            "default_prompt_name": m.spec.default_prompt_name,
            "device": str(mx.default_device()),
        }

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    # ---- tokens -----------------------------------------------------------------------------

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """An explicit prompt wins; then a named one from config_sentence_transformers.json; then the defaults."""
        spec = self.model.spec
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in spec.prompts:
                known = ", ".join(spec.prompts) or "none"
                raise InputError(f"unknown prompt_name {prompt_name!r}; this model's prompts: {known}")
            return spec.prompts[prompt_name]
        if self.default_prompt is not None:
            return self.default_prompt
        if spec.default_prompt_name is not None:
            return spec.prompts.get(spec.default_prompt_name)
        return None

    def tokenize(
        self, texts: Sequence[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> list[list[int]]:
        """Token ids with special tokens, truncated to max_length (InputTooLong when truncation is off)."""
        if isinstance(texts, str):
            raise TypeError("tokenize() takes a list of texts, not one string")
        return self.model.tokenizer.encode(list(texts), self.resolve_prompt(prompt, prompt_name))

    def tokens_per_text(self, texts: Sequence[str], *, prompt: str | None = None) -> list[int]:
        return [len(ids) for ids in self.tokenize(texts, prompt=prompt)]

    def count_tokens(self, texts: Sequence[str], *, prompt: str | None = None) -> int:
        return sum(self.tokens_per_text(texts, prompt=prompt))

    def prompt_skip(self, prompt: str | None = None, prompt_name: str | None = None) -> int:
        """Tokens of `prompt` that pooling leaves out, for models saved with include_prompt=False."""
        prompt = self.resolve_prompt(prompt, prompt_name)
        if not prompt or self.model.spec.include_prompt:
            return 0
        return len(self.model.tokenizer.encode([prompt])[0]) - 1

    # ---- vectors ----------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        dimensions: int | None = None,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32 vectors in input order."""
        ids = self.tokenize(texts, prompt=prompt, prompt_name=prompt_name)
        skip = self.prompt_skip(prompt, prompt_name)
        return self.submit(ids, dimensions=dimensions, normalize=normalize, skip=skip).result()

    def embed_tokens(
        self, ids: Sequence[Sequence[int]], *, dimensions: int | None = None, normalize: bool | None = None
    ) -> np.ndarray:
        """Embed token ids exactly as given: no special tokens are added."""
        return self.submit(ids, dimensions=dimensions, normalize=normalize).result()

    def submit(
        self,
        ids: Sequence[Sequence[int]],
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        skip: int = 0,
    ) -> Future:
        """Queue rows of token ids; the worker packs waiting jobs together. Cancel the future to drop them."""
        model = self.model
        rows = self._validate(ids, dimensions)
        job = _Job(rows, dimensions, self.normalizes if normalize is None else normalize, skip)
        if not rows:
            job.future.set_result(np.zeros((0, dimensions or model.dim), np.float32))
            return job.future
        with self._lock:
            self._stats["queue_depth"] += len(rows)
        self._queue.put(job)
        return job.future

    def _validate(self, ids: Sequence[Sequence[int]], dimensions: int | None) -> list[list[int]]:
        model = self.model
        if dimensions is not None and not 1 <= dimensions <= model.dim:
            raise InputError(f"dimensions must be between 1 and {model.dim}, got {dimensions}")
        rows = [list(r) for r in ids]
        vocab = model.tokenizer.vocab_size
        for i, row in enumerate(rows):
            if not row:
                raise InputError(f"input {i} has no tokens")
            if len(row) > model.max_length:
                raise InputError(f"input {i} has {len(row)} tokens, more than the model's maximum of {model.max_length}")
            if min(row) < 0 or max(row) >= vocab:
                raise InputError(f"input {i} has a token id outside the vocabulary [0, {vocab})")
        return rows

    # ---- the worker threads -----------------------------------------------------------------
    # One planner thread loads the model, packs waiting jobs into batches and hands them to `lanes` lane
    # threads; each lane runs its batches on its own MLX stream (streams are per thread) and resolves a job's
    # future when its last row is done.

    def _work(self) -> None:
        try:
            self._serve_queue()
        finally:
            mx.clear_streams()  # this thread's MLX streams must go before the interpreter does

    def _serve_queue(self) -> None:
        try:
            self._model = load_model(self.model_name, **self._options)
        except BaseException as e:  # handed to load()'s caller, whatever it is
            self._ready.set_exception(e)
            return
        if mx.default_device() == mx.cpu:
            set_threads(max(1, _cores() // self.lanes))
            try:
                self._build_kernels()
            except BaseException as e:
                self._model = None
                self._ready.set_exception(e)
                return
        lanes = [threading.Thread(target=self._run_lane, name=f"embed-lane-{i}", daemon=True)
                 for i in range(self.lanes)]
        for lane in lanes:
            lane.start()
        self._ready.set_result(None)
        try:
            stopping = False
            while not stopping:
                jobs = [self._queue.get()]
                while True:  # everything already waiting rides in the same batches
                    try:
                        jobs.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = any(j is _STOP for j in jobs)
                jobs = [j for j in jobs if j is not _STOP]
                with self._lock:
                    self._stats["queue_depth"] -= sum(len(j.ids) for j in jobs)
                running = [j for j in jobs if j.future.set_running_or_notify_cancel()]
                try:
                    self._dispatch(running)
                except BaseException as e:  # fail exactly these jobs; the planner lives on
                    self._fail(running, e)
        finally:
            for _ in lanes:
                self._batches.put(_STOP)
            for lane in lanes:
                lane.join()
            self._fail_waiting(NotReady("the engine stopped before this work ran"))

    def _fail(self, jobs: list[_Job], error: BaseException) -> None:
        """Resolve these jobs with `error` now; their batches already with a lane find them resolved."""
        with self._lock:
            for job in jobs:
                job.error = job.error or error
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _fail_waiting(self, error: BaseException) -> None:
        """Jobs still queued when the planner stops (a bug, or unload racing a submit) must not wait forever."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                self._fail([job], error)

    def _build_kernels(self) -> None:
        """A padded and an unpadded batch, once, inside `native_build_env`: the model's fused CPU kernels are built
        for this CPU now, at load, and later batches need neither the compiler nor a changed environment."""
        token = self._model.tokenizer.pad_token_id
        with native_build_env():
            for lengths in ((2, 3), (3,)):
                mx.eval(self._launch([(_Job([[token] * n], None, False, 0), 0) for n in lengths]))

    def _dispatch(self, jobs: list[_Job]) -> None:
        """Plan the jobs' rows into batches and queue them for the lanes (blocks while the lanes are busy)."""
        rows = [(job, r) for job in jobs for r in range(len(job.ids))]
        for batch in spread(plan_batches([len(job.ids[r]) for job, r in rows], self.batch_shape), self.lanes):
            self._batches.put([rows[i] for i in batch])

    def _run_lane(self) -> None:
        """Trace and launch a batch while this lane's previous one computes; collect it before idling."""
        in_flight = None
        try:
            while True:
                try:
                    members = self._batches.get(block=in_flight is None)
                except queue.Empty:
                    self._collect(*in_flight)
                    in_flight = None
                    continue
                if members is _STOP:
                    break
                self._started()
                try:
                    launched = (members, self._launch(members))
                except BaseException as e:  # fail only the jobs in this batch; the lane lives on
                    self._done(members, e)
                    launched = None
                if in_flight is not None:
                    self._collect(*in_flight)
                in_flight = launched
            if in_flight is not None:
                self._collect(*in_flight)
        finally:
            mx.clear_streams()

    def _launch(self, members: list[tuple[_Job, int]]) -> mx.array:
        """One padded forward pass and its pooling, evaluated asynchronously."""
        model = self._model
        lengths = [len(job.ids[r]) for job, r in members]
        L = max(lengths)
        ids = np.full((len(members), L), model.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(members), L), np.int32)
        for k, (job, r) in enumerate(members):
            ids[k, : lengths[k]] = job.ids[r]
            mask[k, : lengths[k]] = 1
        pool_mask = mask.copy()
        for k, (job, _) in enumerate(members):
            pool_mask[k, : min(job.skip, lengths[k] - 1)] = 0
        # No lock: MLX keeps tracing state and the compile cache per thread, and async_eval itself may wait
        # (at most 10 tasks in flight), which would stall the other lanes if held under one.
        hidden = model.forward(mx.array(ids), mx.array(mask))
        vectors = pool(hidden, mx.array(pool_mask), model.spec.pooling)
        for layer in model.dense:
            vectors = layer(vectors)
        mx.async_eval(vectors)
        return vectors

    def _collect(self, members: list[tuple[_Job, int]], vectors: mx.array) -> None:
        """Wait for a launched batch, check it, and copy each row into its job's output."""
        try:
            out = np.array(vectors, dtype=np.float32)
            if not np.isfinite(out).all():
                raise ModelError(f"the model produced non-finite values for a batch of {len(members)} input(s); "
                                 f"try dtype float32 or bfloat16")
        except BaseException as e:
            self._done(members, e)
            return
        lengths = [len(job.ids[r]) for job, r in members]
        with self._lock:  # a job's rows may come from several lanes
            for (job, r), v in zip(members, out):
                if job.out is None:
                    job.out = np.empty((len(job.ids), out.shape[1]), np.float32)
                job.out[r] = v
            s = self._stats
            s["batches"] += 1
            s["rows"] += len(members)
            s["tokens"] += sum(lengths)
            s["padded_tokens"] += len(members) * max(lengths)
        self._done(members)

    def _started(self) -> None:
        with self._lock:
            if self._running == 0:
                self._busy_since = time.perf_counter()
            self._running += 1

    def _done(self, members: list[tuple[_Job, int]], error: BaseException | None = None) -> None:
        """Count a batch's rows off their jobs; resolve each job whose last row this was."""
        finished = []
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._stats["busy_seconds"] += time.perf_counter() - self._busy_since
            for job, _ in members:
                job.error = job.error or error
                job.remaining -= 1
                if job.remaining == 0:
                    finished.append(job)
        for job in finished:
            if job.future.done():  # already failed by the planner
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
                continue
            out = truncate_dims(job.out, job.dimensions)
            job.future.set_result(l2_normalize(out) if job.normalize else np.ascontiguousarray(out))
