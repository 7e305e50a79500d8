"""`embed INPUT...` as the default command; `embed NAME ...` dispatches to a registered subcommand's own app."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from cli._errors import one_line_warnings, reported_errors
from cli._options import (
    BatchTokensOpt,
    ChunkOverlapOpt,
    DimensionsOpt,
    DtypeOpt,
    InputFormat,
    LanesOpt,
    LongInputOpt,
    MaxActiveDimsOpt,
    MaxLengthOpt,
    ModelOpt,
    NoNormalizeOpt,
    OnEmpty,
    OutputDtype,
    PoolingOpt,
    PromptNameOpt,
    PromptOpt,
    QuietOpt,
)

# name -> (module defining a one-command `app = typer.Typer()`, one line of help). Imported only when run,
# so `embed --help` and `embed INPUT` never load the server. A file named like a subcommand needs `./NAME`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cli.serve", "serve the engine behind an OpenAI-compatible /v1/embeddings"),
    "rerank": ("cli.rerank", "rank the records of files against a query (cross-encoders, or embedding cosines)"),
    "models": ("cli.models", "list supported architectures, or describe what embed does with a model"),
    "convert": ("cli.convert", "write an MLX checkpoint, optionally quantized, that embed loads directly"),
}


def _epilog() -> str | None:
    """The subcommands, listed under `embed --help`, since the default command hides them from Typer."""
    if not SUBCOMMANDS:
        return None
    lines = [f"embed {name} --help: {about}" for name, (_, about) in SUBCOMMANDS.items()]
    return "Other commands:\n\n" + "\n\n".join(lines)


app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  rich_markup_mode="markdown")


@app.command(epilog=_epilog())
def embed(
    inputs: Annotated[list[str] | None, typer.Argument(
        metavar="INPUT...",
        help="Files (.txt .jsonl .ndjson .csv .tsv .parquet), directories or quoted globs (one text per file), "
             "or - for stdin [default: stdin].", show_default=False)] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Output .parquet or .jsonl [default: JSONL on stdout].", show_default=False)] = None,
    model: ModelOpt = None,
    text_field: Annotated[str, typer.Option(help="JSONL field, CSV/TSV or Parquet column holding the text.")] = "text",
    id_field: Annotated[str | None, typer.Option(
        help="Field or column passed through as the id [default: the record number].", show_default=False)] = None,
    input_format: Annotated[InputFormat | None, typer.Option(
        help="Read inputs as this format, whatever their extension (stdin: txt unless told).",
        show_default=False)] = None,
    max_length: MaxLengthOpt = None,
    batch_tokens: BatchTokensOpt = None,
    lanes: LanesOpt = None,
    dimensions: DimensionsOpt = None,
    no_normalize: NoNormalizeOpt = False,
    prompt: PromptOpt = None,
    prompt_name: PromptNameOpt = None,
    pooling: PoolingOpt = None,
    max_active_dims: MaxActiveDimsOpt = None,
    include_text: Annotated[bool, typer.Option("--include-text", help="Write the input text beside its vector.")] = False,
    dtype: DtypeOpt = None,
    precision: Annotated[OutputDtype, typer.Option(
        "--precision", help="Written vectors: floats, int8/uint8 buckets (needs --calibration) or packed "
        "sign bits (binary/ubinary), as sentence-transformers' quantize_embeddings.")] = OutputDtype.float32,
    calibration: Annotated[str | None, typer.Option(
        help="int8/uint8: float vectors to take each dimension's range from (a Parquet file with an embedding "
        "column, e.g. an earlier embed output, or .npy).", show_default=False)] = None,
    on_empty: Annotated[OnEmpty, typer.Option(
        help="An empty or blank text: fail, leave it out, or write a zero vector with 0 tokens.")] = OnEmpty.error,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted job from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    chunk_rows: Annotated[int, typer.Option(
        min=1, help="Records per checkpoint and per Parquet row group.")] = 512,
    long_input: LongInputOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    quiet: QuietOpt = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on a Ray cluster through Ray Data; -o is then a folder of Parquet files "
                      "(`pip install 'embed[ray]'`).")] = False,
    ray_address: Annotated[str | None, typer.Option(
        envvar="RAY_ADDRESS", show_default=False,
        help="The cluster to join with --ray [default: RAY_ADDRESS, else a local Ray instance].")] = None,
) -> None:
    """Embed every text of INPUT... and write one row per text, in input order: id, embedding, tokens.

    Examples:

    * `embed notes.txt -o notes.parquet` (one text per line)
    * `embed docs.jsonl --text-field body --id-field doc_id -o docs.parquet`
    * `embed table.csv --include-text -o out.jsonl`, and the same for `.tsv` and `.parquet`
    * `embed 'corpus/**/*.md' -o corpus.parquet` (one text per file, id = path)
    * `cat questions.txt | embed --prompt 'query: ' | jq .tokens`
    * `embed big.parquet -o out.parquet --resume` (continue after Ctrl-C)
    * `embed 's3://bucket/docs/' -o s3://bucket/vectors/ --ray` (a folder of Parquet files, on a Ray cluster)
    """
    if not inputs and sys.stdin.isatty():
        raise typer.BadParameter("none given, and stdin is a terminal: pass files, or pipe text in",
                                 param_hint="INPUT...")
    from cli._progress import print_summary, progress_bar
    from embedder.io.pipeline import EmbedOptions, run

    options = EmbedOptions(
        inputs=tuple(inputs or ()),
        output=output,
        model=model,
        text_field=text_field,
        id_field=id_field,
        input_format=input_format.value if input_format else None,
        max_length=max_length,
        batch_tokens=batch_tokens,
        lanes=lanes,
        dimensions=dimensions,
        normalize=not no_normalize,
        prompt=prompt,
        prompt_name=prompt_name,
        pooling=pooling,
        max_active_dims=max_active_dims,
        include_text=include_text,
        dtype=dtype.value if dtype else None,
        precision=precision.value,
        calibration=calibration,
        long_input=long_input.value if long_input else "truncate",
        chunk_overlap=chunk_overlap,
        on_empty=on_empty.value,
        resume=resume,
        overwrite=overwrite,
        chunk_rows=chunk_rows,
    )
    hint = "rerun the same command with --resume to continue" if output else ""
    if ray:
        from embedder.ray import run_job

        with reported_errors(hint):
            summary = run_job(options, ray_address, progress=sys.stderr.isatty() and not quiet)
    else:
        with reported_errors(hint), progress_bar(sys.stderr.isatty() and not quiet) as on_progress:
            summary = run(options, on_progress)
    if not quiet:
        print_summary(summary)


def main(argv: list[str] | None = None) -> None:
    """The console script: a registered subcommand name first runs that command, anything else is `embed`."""
    args = sys.argv[1:] if argv is None else argv
    one_line_warnings()
    if args and args[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[args[0]][0])
        module.app(args=args[1:], prog_name=f"embed {args[0]}")
    else:
        app(args=args, prog_name="embed")
