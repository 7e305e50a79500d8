"""Reader -> tokenizer -> engine -> writer, in input order, in bounded memory, resumable, with progress."""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedder.errors import EmbedError, InputError
from embedder.hub import DEFAULT_MODEL
from embedder.io.digest import RecordDigest
from embedder.io.readers import (
    ReadMeter,
    ReadOptions,
    Record,
    byte_total,
    check_inputs,
    count_hint,
    ids_are_text,
    read_inputs,
)
from embedder.io.writers import Chunk, OutputSpec, Writer, check_target, partial_dir
from embedder.options import EngineOptions
from embedder.quantize import CALIBRATED, check_precision, load_calibration, quantization_ranges

if TYPE_CHECKING:  # the engine module imports MLX; only its name is needed here
    from embedder.engine import EmbeddingEngine

EMPTY_POLICIES = ("error", "skip", "zero")


@dataclass(frozen=True)
class EmbedOptions:
    """One batch job, as the CLI (or a Python caller) describes it; None means the engine's or model's default."""

    inputs: tuple[str, ...] = ()
    output: str | None = None  # None: JSONL on stdout
    model: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    input_format: str | None = None
    max_length: int | None = None
    batch_tokens: int | None = None
    lanes: int | None = None
    dimensions: int | None = None
    normalize: bool = True
    prompt: str | None = None
    prompt_name: str | None = None  # from the model's config_sentence_transformers.json
    pooling: str | None = None  # None: the model's own pooling
    max_active_dims: int | None = None  # a sparse model's nonzero weights a vector keeps; None: the model's
    include_text: bool = False
    dtype: str | None = None  # the model's compute dtype (`options.MODEL_DTYPES`)
    precision: str = "float32"  # of the written vectors: a `quantize.PRECISIONS` entry
    calibration: str | None = None  # int8/uint8: float vectors (Parquet `embedding` column or .npy) for the ranges
    long_input: str = "truncate"  # over the model's maximum: "truncate", "error" or "chunk" (windows, averaged)
    chunk_overlap: int = 0
    on_empty: str = "error"
    resume: bool = False
    overwrite: bool = False
    chunk_rows: int = 512  # records per submit, per checkpoint and per Parquet row group
    windows_in_flight: int = 3  # tokenized windows queued ahead, so the engine never waits on reading

    def engine_options(self) -> EngineOptions:
        """The engine settings this job gives (validated there); the rest stay the engine's defaults."""
        return EngineOptions(model=self.model or DEFAULT_MODEL, max_length=self.max_length,
                             batch_tokens=self.batch_tokens, dtype=self.dtype, pooling=self.pooling, lanes=self.lanes,
                             long_input=self.long_input, chunk_overlap=self.chunk_overlap,
                             max_active_dims=self.max_active_dims)


@dataclass(frozen=True)
class Progress:
    """Rows written so far (a resumed job counts from its checkpoint), this run's tokens, and the total: exact
    from Parquet footers and file counts, estimated from bytes read for line-based files, None from stdin."""

    rows: int
    tokens: int
    total: int | None


@dataclass(frozen=True)
class Summary:
    """What this run did, for the closing line on stderr."""

    rows: int
    tokens: int
    seconds: float
    skipped: int = 0
    resumed_at: int = 0
    resumed_files: int = 0  # a Ray job's parts already complete when it was resumed

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Window:
    """Consecutive records on their way through the engine; `embedded` are the positions the engine computes."""

    records: list[Record]
    embedded: list[int]
    tokens: np.ndarray
    next_index: int
    skipped: int
    future: Future | None = None
    digest: str = ""


ProgressCallback = Callable[[Progress], None]
_END = object()


def run(options: EmbedOptions, on_progress: ProgressCallback | None = None,
        engine: EmbeddingEngine | None = None) -> Summary:
    """Embed every input record and write them in order.

    Pass `engine` to reuse one (tests, a server): its model, max length and batch budget then win over the options'.
    """
    own = () if options.output is None else (options.output, str(partial_dir(options.output)))
    read_options = ReadOptions(options.text_field, options.id_field, options.input_format, exclude=own)
    check_options(options)
    check_target(options.output, overwrite=options.overwrite, resume=options.resume)
    check_inputs(options.inputs, read_options)
    own_engine = engine is None
    engine = make_engine(options) if own_engine else engine
    engine.load()
    spec = output_spec(engine, options, options.output, ids_are_text(options.inputs, read_options),
                       settings=_settings(engine, options))
    meter, digest = ReadMeter(), RecordDigest()
    try:
        writer = Writer(spec, resume=options.resume)
        records = digest.resume(read_inputs(options.inputs, read_options, meter), writer.start_index, writer.digest,
                                writer.checkpoint)
    except EmbedError:  # a refused resume leaves its checkpoint as it was
        _release(engine, own_engine)
        raise
    try:
        summary = _stream(engine, writer, records, digest, meter, options, read_options, on_progress)
        writer.finish()
    except EmbedError as e:
        # Bad input mid-run. The records before it stay checkpointed: the checkpoint vouches for those records
        # alone (`RecordDigest`), so the input can be fixed after them and the job resumed.
        _release(engine, own_engine)
        if writer.start_index == 0:
            writer.discard()
        elif options.output is not None:
            e.advise(f"the first {writer.start_index:,} records are saved in {writer.checkpoint}: fix the input and run "
                     "again with --resume to go on from there")
        raise
    # Ctrl-C and other exits skip the release: it would wait for every batch the engine has already taken.
    _release(engine, own_engine)
    return summary


def _release(engine: EmbeddingEngine, own_engine: bool) -> None:
    """Stop an engine this run started, so no MLX work is running when the process exits."""
    if own_engine:
        engine.unload()


def check_options(options: EmbedOptions) -> None:
    """Option errors that need neither model nor input, reported before either is touched."""
    if options.on_empty not in EMPTY_POLICIES:
        raise InputError(f"--on-empty must be one of {', '.join(EMPTY_POLICIES)}, got {options.on_empty!r}")
    check_precision(options.precision)
    if (options.precision in CALIBRATED) != (options.calibration is not None):
        raise InputError(f"--precision {options.precision} {'needs' if options.calibration is None else 'takes no'} "
                         "--calibration (float vectors, e.g. an earlier embed output, to compute the int8/uint8 "
                         "ranges from)", "calibration")
    if options.chunk_rows < 1:
        raise InputError(f"--chunk-rows must be at least 1, got {options.chunk_rows}")
    options.engine_options()  # the engine's settings are checked there, once


def make_engine(options: EmbedOptions) -> EmbeddingEngine:
    """The engine this job asks for."""
    from embedder.engine import EmbeddingEngine

    return EmbeddingEngine(options=options.engine_options())


def _stream(engine: EmbeddingEngine, writer: Writer, records: Iterator[Record], digest: RecordDigest,
            meter: ReadMeter, options: EmbedOptions, read_options: ReadOptions,
            on_progress: ProgressCallback | None) -> Summary:
    """Take the job's chunks in order and write them; the writer's checkpoint says where a resume starts."""
    start, resumed_at = time.perf_counter(), writer.start_index
    total = count_hint(options.inputs, read_options) if on_progress else None
    total_bytes = byte_total(options.inputs, read_options) if on_progress and total is None else None
    rows = tokens = skipped = 0
    done_rows = writer.rows
    for chunk, chunk_skipped in embed_chunks(engine, records, writer.spec, options, digest):
        writer.write(chunk)
        rows, tokens = rows + len(chunk.ids), tokens + int(chunk.tokens.sum())
        skipped += chunk_skipped
        if on_progress:
            known = total if total_bytes is None else meter.estimated_total(total_bytes)
            on_progress(Progress(done_rows + rows, tokens, known))
    return Summary(rows, tokens, time.perf_counter() - start, skipped, resumed_at)


def embed_chunks(engine: EmbeddingEngine, records: Iterator[Record], spec: OutputSpec, options: EmbedOptions,
                 digest: RecordDigest | None = None) -> Iterator[tuple[Chunk, int]]:
    """(output chunk, records it left out as empty) in input order, `options.chunk_rows` records at a time; with
    `digest` (hashing `records` as they pass), each chunk carries the digest of the records up to its end.

    A producer thread reads and tokenizes ahead, so the engine never waits on reading; closing the generator
    early (an error, Ctrl-C) cancels the work already submitted.
    """
    windows: queue.Queue = queue.Queue(maxsize=options.windows_in_flight)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(records, engine, options, windows, stop, digest),
                                name="embed-reader", daemon=True)
    producer.start()
    try:
        while (item := _wait(windows.get)) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield _chunk(item, _wait(item.future.result) if item.future else None, spec, options), item.skipped
    finally:
        stop.set()
        _drain(windows)


def _wait(get: Callable[..., object]) -> object:
    """get(timeout=...) until it answers: a blocked wait without one holds off Ctrl-C while the signal lands on
    another thread (the reader in a read of stdin, a lane), so the main thread wakes to take it."""
    while True:
        try:
            return get(timeout=0.1)
        except (queue.Empty, TimeoutError):  # futures raise the built-in TimeoutError since 3.11
            continue


def _produce(records: Iterator[Record], engine: EmbeddingEngine, options: EmbedOptions, windows: queue.Queue,
             stop: threading.Event, digest: RecordDigest | None) -> None:
    """Producer thread: read a window, tokenize it, submit it, queue it; an error travels down the queue."""
    try:
        prompt_name = engine.output_prompt_name(options.prompt, options.prompt_name)
        skip = engine.prompt_skip(options.prompt, prompt_name)
        normalize = None if options.normalize else False
        while batch := list(itertools.islice(records, options.chunk_rows)):
            window, ids = _tokenized(batch, engine, options, prompt_name)
            window.digest = "" if digest is None else digest.hexdigest()
            if ids:
                window.future = engine.submit_output_rows(ids, query=options.prompt_name == "query",
                                                          dimensions=options.dimensions, normalize=normalize, skip=skip)
            if not _put(windows, window, stop):
                return
        _put(windows, _END, stop)
    except BaseException as e:  # handed to the main thread, which raises it
        _put(windows, e, stop)


def _tokenized(batch: list[Record], engine: EmbeddingEngine, options: EmbedOptions,
               prompt_name: str | None) -> tuple[_Window, list]:
    """Apply the empty-text policy (an empty text has no embedding, so it is never sent), then tokenize texts and
    preprocess images, each row in its record's place."""
    kept: list[Record] = []
    embedded: list[int] = []
    for record in batch:
        if record.image is not None or record.text.strip():
            embedded.append(len(kept))
            kept.append(record)
        elif options.on_empty == "error":
            raise InputError(f"{record.where}: empty text (pass --on-empty skip or --on-empty zero)")
        elif options.on_empty == "zero":
            kept.append(record)
    records = [kept[i] for i in embedded]
    rows = engine.input_rows([r.text if r.image is None else r.image for r in records], prompt=options.prompt,
                             prompt_name=prompt_name, where=[r.where for r in records])
    tokens = np.zeros(len(kept), np.int32)
    tokens[embedded] = engine.embedded_tokens(rows, query=options.prompt_name == "query")
    return _Window(kept, embedded, tokens, batch[-1].index + 1, len(batch) - len(kept)), rows


def _put(windows: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Queue an item unless the main thread has stopped listening; then drop its work instead."""
    while not stop.is_set():
        try:
            windows.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    _cancel(item)
    return False


def _drain(windows: queue.Queue) -> None:
    """Cancel the work of windows nobody will write (after an error or Ctrl-C)."""
    while True:
        try:
            _cancel(windows.get_nowait())
        except queue.Empty:
            return


def _cancel(item: object) -> None:
    if isinstance(item, _Window) and item.future is not None:
        item.future.cancel()


def _chunk(window: _Window, vectors: np.ndarray | list | None, spec: OutputSpec, options: EmbedOptions) -> Chunk:
    """A window's output rows; rows kept by `--on-empty zero` get a zero vector (a multi-vector model's, none) and 0
    tokens."""
    if spec.multi_vector and (vectors is None or len(vectors) != len(window.records)):
        full = [np.zeros((0, spec.dim), np.float32)] * len(window.records)
        for at, v in zip(window.embedded, vectors or []):
            full[at] = v
        vectors = full
    elif vectors is None or len(vectors) != len(window.records):
        full = np.zeros((len(window.records), spec.dim), np.float32)
        if vectors is not None:
            full[window.embedded] = vectors
        vectors = full
    return Chunk(
        ids=[r.id for r in window.records],
        vectors=vectors,
        tokens=window.tokens,
        texts=[r.text for r in window.records] if options.include_text else None,
        next_index=window.next_index,
        digest=window.digest,
    )


def output_spec(engine: EmbeddingEngine, options: EmbedOptions, path: str | None, text_ids: bool,
                settings: dict | None = None) -> OutputSpec:
    """How this job's rows are written: the width and type its precision stores, its ranges, its metadata."""
    dim = engine.check_dimensions(options.dimensions) or engine.dim
    if (engine.sparse or engine.cross_encoder or engine.multi_vector) and options.precision != "float32":
        kind = ("a sparse (SPLADE) model, stored as" if engine.sparse
                else "a sequence classifier, its labels stored with" if engine.cross_encoder
                else "a multi-vector (ColBERT) model, its token vectors stored as")
        raise InputError(f"{engine.model_id} is {kind} float32 values; --precision {options.precision} does not apply",
                         "precision")
    ranges = None
    if options.calibration is not None:
        ranges = quantization_ranges(load_calibration(options.calibration)[:, :dim])
    return OutputSpec(path=path, dim=dim, include_text=options.include_text, text_ids=text_ids,
                      metadata=file_metadata(engine, options, ranges), settings=settings or {},
                      precision=options.precision, ranges=ranges, sparse=engine.sparse,
                      labels=engine.labels if engine.cross_encoder else (), multi_vector=engine.multi_vector)


def file_metadata(engine: EmbeddingEngine, options: EmbedOptions,
                  ranges: np.ndarray | None = None) -> dict[str, str]:
    """The model and the settings in the Parquet footer, so a file says how its vectors were made."""
    meta = {
        **engine.info(),
        "dimensions": options.dimensions or engine.dim,
        "normalize": engine.normalizes and options.normalize,
        "prompt": engine.resolve_prompt(options.prompt, engine.output_prompt_name(options.prompt, options.prompt_name)),
        "embedding_dtype": options.precision,
        "quantization_ranges": None if ranges is None else ranges.tolist(),
        "text_field": options.text_field,
        "id_field": options.id_field,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _settings(engine: EmbeddingEngine, options: EmbedOptions) -> dict:
    """Everything that shapes the output but the records themselves (the checkpoint's `RecordDigest` vouches for
    those); a resume is refused unless all of it is unchanged."""
    job = {k: v for k, v in asdict(options).items() if k not in ("resume", "overwrite", "windows_in_flight")}
    return {"job": job, "model": engine.info()}

