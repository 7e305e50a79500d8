"""`embed models`: the architectures embed runs, or what it will do with one given model."""

import json
from typing import Annotated

import typer

from cli._errors import reported_errors


def models(
    model: Annotated[str | None, typer.Argument(
        help="Hub repo id, local folder or .gguf file to describe [default: list what is supported].",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """List supported architectures, or describe MODEL: architecture, dim, max length, pooling, normalization,
    prompts, dtype and quantization, as embed will run it."""
    with reported_errors():
        if model is None:
            from embedder.models.gguf import ARCHITECTURES as GGUF
            from embedder.models.loading import supported_architectures

            info = {
                "architectures": supported_architectures(),
                "causal_lm": "any other model_type that the installed mlx-lm implements (pooling mean, last or cls)",
                "gguf": sorted(GGUF),
            }
        else:
            from embedder import EmbeddingEngine

            engine = EmbeddingEngine(model)
            info = engine.info()
            engine.unload()
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False))
        return
    for key, value in info.items():
        typer.echo(f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")


# The one-command app `cli.main` dispatches `embed models ...` to.
app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
app.command()(models)
