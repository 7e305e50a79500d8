"""`embed serve`: the engine behind an OpenAI-compatible /v1/embeddings on a local port."""

from typing import Annotated

import typer

from cli._errors import reported_errors
from cli._options import BatchTokensOpt, ChunkOverlapOpt, DtypeOpt, LanesOpt, LongInputOpt, MaxActiveDimsOpt, PoolingOpt


def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Models to serve (Hub ids or local folders, or NAME=MODEL to serve one under NAME too); "
                       "default all-MiniLM-L6-v2.", show_default=False),
    ] = None,
    embedding_model: Annotated[
        str | None,
        typer.Option("--embedding-model", help="Serve this model alone, loaded at start (as vllm-mlx).", show_default=False),
    ] = None,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option("--served-model-name", help="A name clients may call the model by, listed in /v1/models and "
                     "echoed in replies (as vLLM and TEI); repeat for several.", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; loopback unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="EMBED_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1.", show_default=False),
    ] = None,
    preload: Annotated[bool, typer.Option("--preload", help="Load every model at start, not on first use.")] = False,
    no_truncate: Annotated[
        bool, typer.Option("--no-truncate", help="Refuse inputs over the model's max length with a 400 error instead of cutting them.")
    ] = False,
    max_inputs: Annotated[int, typer.Option(min=1, help="Most inputs one request may carry.")] = 2048,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted (else 413).")] = 32 * 1024 * 1024,
    max_queue: Annotated[int, typer.Option(min=1, help="Inputs in flight before new requests get 429.")] = 8192,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log a line per request on stdout, as uvicorn's "
                           "access log does.")
    ] = True,
    cors_allow_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-allow-origin", help="A browser origin allowed to call the API (https://app.example, "
                     "or * for any), as TEI's flag; repeat for several. None by default.", show_default=False),
    ] = None,
    long_input: LongInputOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    batch_tokens: BatchTokensOpt = None,
    lanes: LanesOpt = None,
    dtype: DtypeOpt = None,
    pooling: PoolingOpt = None,
    max_active_dims: MaxActiveDimsOpt = None,
) -> None:
    """Serve embeddings at http://HOST:PORT/v1/embeddings, as OpenAI's API does.

    Example: embed serve --port 8000, then
    curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"input": "hello"}'
    """
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        typer.echo(f"error: embed serve needs {exc.name}: pip install 'embed[serve]'", err=True)
        raise typer.Exit(1) from exc
    with reported_errors():
        from embedder.options import EngineOptions
        from embedder.serve.app import ServerOptions, create_app
        from embedder.serve.registry import build_registry

        options = ServerOptions(api_key=api_key, max_inputs=max_inputs, max_body_bytes=max_body_bytes, max_queue=max_queue,
                                access_log=access_log, cors_origins=tuple(cors_allow_origin or ()))
        registry = build_registry(
            models or [], embedding_model=embedding_model, served_model_names=served_model_name or (), preload=preload,
            options=EngineOptions(truncate=not no_truncate, batch_tokens=batch_tokens, lanes=lanes,
                                  dtype=dtype.value if dtype else None,
                                  long_input=long_input.value if long_input else None, chunk_overlap=chunk_overlap,
                                  pooling=pooling, max_active_dims=max_active_dims),
        )
        uvicorn.run(create_app(registry, options), host=host, port=port, log_level="info", access_log=False)


# The one-command app `cli.main` dispatches `embed serve ...` to.
app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
app.command()(serve)
