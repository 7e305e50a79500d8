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
            from embedder.models.loading import architectures_with, own_encoders, supported_architectures

            info = {
                "architectures": supported_architectures(),
                "own_encoders": own_encoders(),
                "rerankers": architectures_with("Classifier"),
                "sparse": architectures_with("MaskedLM"),
                "causal_lm": "any other model_type that the installed mlx-lm implements (pooling mean, last or cls)",
                "gguf": sorted(set(GGUF.values())),  # the model types GGUF files of llama.cpp load as
            }
        else:
            from embedder import EmbeddingEngine

            engine = EmbeddingEngine(model)
            info = engine.info()
            engine.unload()
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(_supported_table(info) if model is None else _model_table(info))


# Well-known checkpoints of each architecture, for the listing.
EXAMPLES = {
    "bert": "all-MiniLM-L6-v2, bge-*-en-v1.5, e5-*-v2, gte-small/base/large",
    "distilbert": "msmarco-distilbert-*, multi-qa-distilbert-*",
    "mpnet": "all-mpnet-base-v2, multi-qa-mpnet-base-*",
    "roberta": "all-roberta-large-v1",
    "xlm-roberta": "multilingual-e5-*, bge-m3, paraphrase-multilingual-*",
    "camembert": "sentence-camembert-*",
    "modernbert": "modernbert-embed-base, gte-modernbert-base",
    "nomic_bert": "nomic-embed-text-v1, nomic-embed-text-v1.5",
    "gte": "gte-base/large-en-v1.5, gte-multilingual-base, snowflake-arctic-embed-m-v2.0",
    "new": "gte-*-en-v1.5, gte-multilingual-base (their remote code's name for gte)",
    "t5": "sentence-t5-base/large/xl, gtr-t5-base/large",
    "siglip": "siglip-base-patch16-224 and the like: images and texts in one space (the images extra)",
    "gemma3_text": "embeddinggemma-300m",
    "qwen3": "Qwen3-Embedding-0.6B/4B/8B",
    "qwen2": "gte-Qwen2-*-instruct",
    "mistral": "e5-mistral-7b-instruct, SFR-Embedding-Mistral",
    "llama": "LLM2Vec and other Llama embedders",
}


RUNS_ON = {"siglip": "mlx-embeddings (the images extra)"}


def _supported_table(info: dict):
    from rich.table import Table

    table = Table(title="Architectures embed runs", title_justify="left")
    for column in ("architecture", "runs on", "GGUF", "rerank", "sparse", "for example"):
        table.add_column(column)
    for arch in info["architectures"]:
        runs_on = RUNS_ON.get(arch) or ("embed's MLX encoder" if arch in info["own_encoders"]
                                        else "mlx-lm (the llm extra), pooled")
        marks = ["yes" if arch in info[key] else "" for key in ("gguf", "rerankers", "sparse")]
        table.add_row(arch, runs_on, *marks, EXAMPLES.get(arch, ""))
    table.caption = f"and {info['causal_lm']}"
    return table


def _model_table(info: dict):
    from rich.table import Table

    table = Table(title=f"What embed will do with {info['model']}", title_justify="left", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return table


# The one-command app `cli.main` dispatches `embed models ...` to.
app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
app.command()(models)
