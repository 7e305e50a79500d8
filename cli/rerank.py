"""`embed rerank QUERY INPUT...`: the records of INPUT ranked against QUERY, best first."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli._errors import reported_errors
from cli._options import BatchTokensOpt, DtypeOpt, InputFormat, LanesOpt, LongInputOpt, MaxLengthOpt, ModelOpt, QuietOpt


def rerank(
    query: Annotated[str, typer.Argument(help="The text to rank the documents against.")],
    inputs: Annotated[list[str] | None, typer.Argument(
        metavar="INPUT...", help="Documents, read as `embed` reads them: one per line of .txt, a field of "
        ".jsonl/.csv/.tsv/.parquet, one per file of a folder or glob, or - for stdin [default: stdin].",
        show_default=False)] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Output .parquet or .jsonl [default: JSONL on stdout].", show_default=False)] = None,
    model: ModelOpt = None,
    top_n: Annotated[int | None, typer.Option(
        "--top-n", min=1, help="Keep the N best documents [default: all].", show_default=False)] = None,
    text_field: Annotated[str, typer.Option(help="JSONL field, CSV/TSV or Parquet column holding the text.")] = "text",
    id_field: Annotated[str | None, typer.Option(
        help="Field or column passed through as the id [default: the record number].", show_default=False)] = None,
    input_format: Annotated[InputFormat | None, typer.Option(
        help="Read inputs as this format, whatever their extension.", show_default=False)] = None,
    max_length: MaxLengthOpt = None,
    batch_tokens: BatchTokensOpt = None,
    lanes: LanesOpt = None,
    dtype: DtypeOpt = None,
    long_input: LongInputOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every document against QUERY and write them best first: rank, index (the record number), id, score,
    text. A cross-encoder (ms-marco-MiniLM, bge-reranker...) gives sentence-transformers' CrossEncoder scores; an
    embedding model gives cosine similarities.

    Example: `embed rerank 'how do I reset my password' faq.jsonl -m cross-encoder/ms-marco-MiniLM-L6-v2 --top-n 5`
    """
    if not inputs and sys.stdin.isatty():
        raise typer.BadParameter("none given, and stdin is a terminal: pass files, or pipe text in",
                                 param_hint="INPUT...")
    with reported_errors():
        from embedder import DEFAULT_MODEL, EmbeddingEngine
        from embedder.io.ranking import RankOptions, check_ranking, rank_file
        from embedder.io.readers import ReadOptions
        from embedder.options import EngineOptions

        options = RankOptions(
            query=query, inputs=tuple(inputs or ()), output=output, top_n=top_n, overwrite=overwrite,
            read=ReadOptions(text_field, id_field, input_format.value if input_format else None))
        check_ranking(options)
        engine = EmbeddingEngine(options=EngineOptions(
            model=model or DEFAULT_MODEL, max_length=max_length, batch_tokens=batch_tokens, lanes=lanes,
            dtype=dtype.value if dtype else None,
            long_input=long_input.value if long_input else None))
        summary = rank_file(engine, options)
    if not quiet:
        print(f"ranked {summary.documents:,} documents, {summary.tokens:,} tokens in {summary.seconds:.1f} s",
              file=sys.stderr)


# The one-command app `cli.main` dispatches `embed rerank ...` to.
app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  rich_markup_mode="markdown")
app.command()(rerank)
