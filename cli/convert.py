"""`embed convert`: write an MLX checkpoint (optionally quantized) that embed then loads directly."""

from pathlib import Path
from typing import Annotated

import typer

from cli._errors import reported_errors


def convert(
    model: Annotated[str, typer.Argument(help="Hub repo id, local folder or .gguf file.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (must not exist or be empty).",
                                         show_default=False)],
    quantize: Annotated[int | None, typer.Option(help="Quantize weights to N bits: 2, 3, 4, 5, 6 or 8.",
                                                 show_default=False)] = None,
    group_size: Annotated[int | None, typer.Option(
        min=1, help="Weights per quantization scale [default: 32 up to 4 bits, else 64].", show_default=False)] = None,
    dtype: Annotated[str | None, typer.Option(
        help="float32, float16 or bfloat16 [default: float16 when quantizing (bfloat16 for Gemma), else the model's].",
        show_default=False)] = None,
) -> None:
    """Convert MODEL to an mlx-community-style checkpoint in OUTPUT.

    Examples: `embed convert sentence-transformers/all-MiniLM-L6-v2 -o minilm-4bit --quantize 4`,
    then `embed docs.txt -m minilm-4bit`; `embed convert model.Q4_0.gguf -o model-mlx`.
    """
    with reported_errors():
        from embedder.models.convert import ConvertOptions
        from embedder.models.convert import convert as run

        out = run(ConvertOptions(model, output, quantize, group_size, dtype))
        typer.echo(f"wrote {out}", err=True)


# The one-command app `cli.main` dispatches `embed convert ...` to.
app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
app.command()(convert)
