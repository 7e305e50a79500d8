"""`embed INPUT... -o OUT_DIR --ray`: the batch job on a Ray cluster through Ray Data.

Ray Data reads every input file (local paths, or any URI pyarrow's filesystems open) and hands each one whole
to an actor pool, one actor per GPU or per CPU node; an actor parses it with embed's own readers (so records,
ids and errors equal a single-machine run), embeds it through the engine's planner and lanes, and writes
`part-NNNNN.parquet` for it, renamed into place when complete. A rerun with --resume keeps the parts whose input
file is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from embedder import errors
from embedder.errors import EmbedError, InputError
from embedder.io.pipeline import EmbedOptions, Summary, check_options, embed_chunks, make_engine, output_spec
from embedder.io.readers import ReadOptions, Record, integer_ids, read_source
from embedder.io.writers import OutputSpec, arrow_schema, arrow_table
from embedder.ray.dataset import actor_plan, require_ray
from embedder.ray.output import OutputDir
from embedder.ray.sources import InputFile, expand_inputs, numbered, parquet_footer, ray_path


def run_job(options: EmbedOptions, address: str | None = None, progress: bool = True) -> Summary:
    """Embed every input file into OUT_DIR (options.output); connects to `address`, else RAY_ADDRESS, else
    starts a local Ray instance."""
    check_options(options)
    require_ray()
    if options.output is None:
        raise InputError("--ray writes a folder of Parquet files: pass it with -o OUT_DIR")
    read_options = ReadOptions(options.text_field, options.id_field, options.input_format)
    files = expand_inputs(options.inputs, read_options)
    out = OutputDir(options.output)
    out.check(resume=options.resume, overwrite=options.overwrite)
    start = time.perf_counter()
    _connect(address, progress)
    if options.id_field is None:
        files = numbered(files, _record_counts(files, read_options))
    done = out.prepare(_job_settings(options), [_identity(f) for f in files], resume=options.resume)
    text_ids = _ids_are_text(files, read_options)
    try:
        results = _embed(files, done, options, out, text_ids)
    except EmbedError as e:
        if saved := len(out.done()):
            e.advise(f"the parts of {saved:,} input files are saved in {out.uri}: fix the input and run again with "
                     "--resume to embed only the rest")
        raise
    return Summary(rows=sum(r["rows"] for r in results), tokens=sum(r["tokens"] for r in results),
                   seconds=time.perf_counter() - start, skipped=sum(r["skipped"] for r in results),
                   resumed_files=len(done))


def _connect(address: str | None, progress: bool) -> None:
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    if not progress:  # Ray Data logs its progress instead of drawing it when the bars are off
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _job_settings(options: EmbedOptions) -> dict:
    """What shapes every part; a resume must find the same in the folder's manifest."""
    skip = ("resume", "overwrite", "windows_in_flight", "lanes", "batch_tokens")
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in skip}


def _identity(file: InputFile) -> list:
    """What a part stands for: its input file as it was (name, size, time) and its first record number (its ids).
    A resume keeps a part only while all of it is unchanged, so fixing one file redoes that file alone, and the
    files after it only where its record count changed."""
    return [file.source.name, file.size, file.mtime_ns, file.first_index]


def _record_counts(files: list[InputFile], read_options: ReadOptions) -> dict[int, int]:
    """Records per file, for the record numbers (ids): Parquet footers, one per whole-file text, and a parallel
    pass over the rest that parses them as the embedding pass will (so bad input fails before any model loads)."""
    counts = {f.number: 1 for f in files if f.source.kind == "file"}
    counts |= {f.number: parquet_footer(f).num_rows for f in files if f.source.kind == "parquet"}
    rest = [f for f in files if f.number not in counts]
    if rest:
        import ray.data

        by_path = {ray_path(f.uri): f for f in rest}
        dataset = ray.data.read_binary_files([f.uri for f in rest], include_paths=True, override_num_blocks=len(rest))
        counted = dataset.map_batches(_count_records, batch_size=1, fn_kwargs={"files": by_path,
                                                                                "read_options": read_options})
        counts |= {int(r["number"]): int(r["rows"]) for r in _run(counted)}
    return counts


def _count_records(batch: dict, files: dict[str, InputFile], read_options: ReadOptions) -> dict:
    results = []
    try:
        for path, data in zip(batch["path"], batch["bytes"]):
            file = files[path]
            results.append((file.number, sum(1 for _ in read_source(file.source, read_options, data)), 0, 0))
    except EmbedError as e:
        return _result_rows(results, e)
    return _result_rows(results)


def _ids_are_text(files: list[InputFile], read_options: ReadOptions) -> bool:
    """As on one machine: integer ids only when every id is known to be one (record numbers, integer columns)."""
    if read_options.id_field is None:
        return any(f.source.kind == "file" for f in files)
    return any(f.source.kind != "parquet"
               or not integer_ids(parquet_footer(f).schema.to_arrow_schema(), read_options.id_field) for f in files)


def _embed(files: list[InputFile], done: set[int], options: EmbedOptions, out: OutputDir,
           text_ids: bool) -> list[dict]:
    todo = [f for f in files if f.number not in done]
    if not todo:
        return []
    import ray.data

    actors, resources, lanes = actor_plan()
    dataset = ray.data.read_binary_files([f.uri for f in todo], include_paths=True, override_num_blocks=len(todo))
    embedded = dataset.map_batches(
        FileEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), **resources,
        fn_constructor_kwargs={"options": dataclasses.replace(options, lanes=options.lanes or lanes), "out": out,
                               "files": {ray_path(f.uri): f for f in todo}, "text_ids": text_ids},
    )
    return _run(embedded)


def _run(dataset) -> list[dict]:
    """Execute a dataset of result rows; the first row carrying an embed error raises it here, as itself."""
    rows = []
    for row in dataset.iter_rows():
        if row["error"]:
            kind, _, message = row["error"].partition(":")
            raise getattr(errors, kind, EmbedError)(message)
        rows.append(row)
    return rows


def _result_rows(results: list[tuple], error: EmbedError | None = None) -> dict:
    """A UDF's results as columns; an embed error travels as data, since Ray wraps a raised one beyond recognition."""
    columns = ("number", "rows", "tokens", "skipped")
    out = {key: np.array([r[k] for r in results], np.int64) for k, key in enumerate(columns)}
    out["error"] = np.array(["" for _ in results] + ([f"{type(error).__name__}:{error}"] if error else []), object)
    if error:
        out = {key: np.append(values, -1) if key != "error" else values for key, values in out.items()}
    return out


class FileEmbedder:
    """A Ray Data actor: loads the engine once, then embeds one whole input file per call into its part."""

    def __init__(self, options: EmbedOptions, out: OutputDir, files: dict[str, InputFile], text_ids: bool):
        self.options, self.out, self.files = options, out, files
        self.error: EmbedError | None = None
        try:  # a model that cannot load fails every call with its own message
            self.engine = make_engine(options)
            self.engine.load()
            self.spec = output_spec(self.engine, options, None, text_ids)
        except EmbedError as e:
            self.error = e

    def __call__(self, batch: dict) -> dict:
        results = []
        try:
            if self.error is not None:
                raise self.error
            for path, data in zip(batch["path"], batch["bytes"]):
                file = self.files[path]
                results.append((file.number, *embed_file(self.engine, file, data, self.spec, self.options, self.out)))
        except EmbedError as e:
            return _result_rows(results, e)
        return _result_rows(results)


def embed_file(engine, file: InputFile, data: bytes, spec: OutputSpec, options: EmbedOptions,
               out: OutputDir) -> tuple[int, int, int]:
    """Parse, embed and write one file's part; (rows, tokens, records left out as empty)."""
    read_options = ReadOptions(options.text_field, options.id_field, options.input_format)
    first = file.first_index or 0
    records = (Record.read(first + i, record_id, content, where)
               for i, (record_id, content, where) in enumerate(read_source(file.source, read_options, data)))
    totals = [0, 0, 0]

    def tables():
        for chunk, skipped in embed_chunks(engine, records, spec, options):
            totals[0] += len(chunk.ids)
            totals[1] += int(chunk.tokens.sum())
            totals[2] += skipped
            if chunk.ids:
                yield arrow_table(chunk, spec)

    out.write_part(file.number, arrow_schema(spec), tables())
    return totals[0], totals[1], totals[2]
