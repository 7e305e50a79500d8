"""Option types declared once, as `Annotated` aliases, so every command spells a flag the same way."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from embedder.hub import DEFAULT_MODEL


class InputFormat(str, Enum):
    txt = "txt"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"


class LongInput(str, Enum):
    truncate = "truncate"
    error = "error"
    chunk = "chunk"


LongInputOpt = Annotated[LongInput | None, typer.Option(
    "--long-input", show_default=False,
    help="An input over the model's maximum: cut it (truncate), refuse it (error), or embed it whole as windows "
         "averaged by token count (chunk).")]
ChunkOverlapOpt = Annotated[int, typer.Option(
    "--chunk-overlap", min=0, help="With --long-input chunk: tokens consecutive windows share.")]


class OnEmpty(str, Enum):
    error = "error"
    skip = "skip"
    zero = "zero"


class OutputDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    int8 = "int8"
    uint8 = "uint8"
    binary = "binary"
    ubinary = "ubinary"


class ModelDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"


DtypeOpt = Annotated[ModelDtype | None, typer.Option(
    "--dtype", show_default=False,
    help="The model's compute precision [default: float32 on a CPU, float16 on a GPU]. On a CPU, float16 "
         "(AVX512-FP16) runs the model's matmuls in float16, ~1.4x faster, cosine to float32 0.99999; bfloat16 "
         "(AVX512-BF16) in bfloat16, cosine 0.99995; int8 (AVX512-VNNI) an encoder's in 8-bit integers, ~2x "
         "faster, cosine 0.99+ (bench/README.md).")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar="EMBED_MODEL", show_default=False,
                 help=f"Hugging Face repo id or local directory [default: {DEFAULT_MODEL}]."),
]
MaxLengthOpt = Annotated[
    int | None, typer.Option(min=1, help="Truncate inputs to N tokens [default: the model's].", show_default=False)
]
BatchTokensOpt = Annotated[
    int | None,
    typer.Option(min=1, show_default=False,
                 help="Padded-token budget per forward batch (rows x longest); default 8192 on a CPU, 16384 on a GPU."),
]
LanesOpt = Annotated[
    int | None,
    typer.Option(min=1, envvar="EMBED_LANES", show_default=False,
                 help="Batches computed at once, each on its own thread [default: one per core (at most 8) on a CPU, "
                      "1 on a GPU]."),
]
DimensionsOpt = Annotated[
    int | None, typer.Option(min=1, help="Keep the first N dimensions, then re-normalize.", show_default=False)
]
NoNormalizeOpt = Annotated[bool, typer.Option("--no-normalize", help="Skip the final L2 normalization.")]
PromptOpt = Annotated[str | None, typer.Option(help="Text prepended to every input, e.g. 'query: '.")]
PromptNameOpt = Annotated[str | None, typer.Option(
    help="A prompt named in the model's config_sentence_transformers.json, e.g. query or document; with a ColBERT "
         "or inference-free SPLADE model, query embeds the texts as queries.",
    show_default=False)]
PoolingOpt = Annotated[str | None, typer.Option(
    help="Override the model's pooling: mean, cls, last, max (for causal LMs: mean by default); splade for a "
         "masked-LM checkpoint's sparse vectors.",
    show_default=False)]
MaxActiveDimsOpt = Annotated[int | None, typer.Option(
    min=1, help="A sparse (SPLADE) model's vectors keep only their N largest weights, as sentence-transformers' "
                "max_active_dims [default: the model's, else all].", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary line.")]
