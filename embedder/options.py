"""How an engine is set up: one frozen object, validated once, that every front passes on (the CLI, the server,
the batch pipeline, Ray) and `load_model` reads."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError
from .hub import DEFAULT_MODEL
from .long_inputs import LONG_INPUT_MODES

MODEL_DTYPES = ("float32", "float16", "bfloat16", "int8")  # the last three: CPU matmuls in them, given the instructions


@dataclass(frozen=True)
class EngineOptions:
    """None means the model's (or the device's) default."""

    model: str = DEFAULT_MODEL
    max_length: int | None = None  # tokens per input; at most the model's
    batch_tokens: int | None = None  # padded tokens per batch
    max_batch_rows: int | None = None
    dtype: str | None = None  # the model's compute dtype
    normalize: bool | None = None
    pooling: str | None = None  # sentence-transformers' mode names, or candle-vllm's `last`; `+` joins several
    max_active_dims: int | None = None  # a sparse (SPLADE) model's nonzero weights a vector keeps at most
    prompt: str | None = None  # prepended to every text unless a request names another
    truncate: bool = True  # False: an input over max_length is an error, not cut (`long_input` "error")
    lanes: int | None = None  # batches in flight at once
    long_input: str | None = None  # "truncate", "error" or "chunk"; None: as `truncate` says
    chunk_overlap: int = 0  # "chunk": tokens consecutive windows share

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_tokens", "max_batch_rows", "lanes", "max_active_dims"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}", name)
        if self.dtype is not None and self.dtype not in MODEL_DTYPES:
            raise InputError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.dtype!r}", "dtype")
        if not self.model:
            raise InputError("no model given", "model")
        if self.long_input is not None and self.long_input not in LONG_INPUT_MODES:
            raise InputError(f"long_input must be one of {', '.join(LONG_INPUT_MODES)}, got {self.long_input!r}",
                             "long_input")
        if not isinstance(self.chunk_overlap, int) or self.chunk_overlap < 0:
            raise InputError(f"chunk_overlap must be a whole number of at least 0, got {self.chunk_overlap!r}",
                             "chunk_overlap")
        if self.chunk_overlap and self.long_input_mode != "chunk":
            raise InputError("chunk_overlap is for long_input chunk (--long-input chunk), where windows share tokens",
                             "chunk_overlap")

    @property
    def long_input_mode(self) -> str:
        return self.long_input or ("truncate" if self.truncate else "error")
