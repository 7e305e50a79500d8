"""The `llm` plugin: embed's local models as `llm` embedding models, `embed/<short name>`, run in-process."""

import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import llm

from embedder.hub import DEFAULT_MODEL, canonical_id

MODELS_ENV = "EMBED_LLM_MODELS"  # comma-separated Hub ids or folders to offer besides the ones found locally


@llm.hookimpl
def register_embedding_models(register) -> None:
    for model_id, model in local_models().items():
        register(EmbedModel(model_id, model))


def local_models() -> dict[str, str]:
    """`embed/<short name>` -> the model as embed takes it. llm asks on every command, so this only lists
    folders: no MLX, no network."""
    names = [DEFAULT_MODEL, *_env_models(), *_cached_sentence_transformers()]
    found: dict[str, str] = {}
    for name in dict.fromkeys(canonical_id(n) for n in names):
        short = f"embed/{Path(name).name}"
        found[short if short not in found else f"embed/{name}"] = name
    return found


def _env_models() -> list[str]:
    return [n.strip() for n in os.environ.get(MODELS_ENV, "").split(",") if n.strip()]


def _cached_sentence_transformers() -> list[str]:
    """Hub-cache repos with a modules.json: sentence-transformers models, the kind embed is built to run."""
    from huggingface_hub.constants import HF_HUB_CACHE

    repos = {p.parents[2].name for p in Path(HF_HUB_CACHE).glob("models--*/snapshots/*/modules.json")}
    return sorted("/".join(repo.split("--")[1:]) for repo in repos)


@functools.cache
def _engine(model: str):
    """One engine per model for the whole process, whichever EmbedModel instance llm hands the batch to."""
    from embedder import EmbeddingEngine

    return EmbeddingEngine(model)


class EmbedModel(llm.EmbeddingModel):
    """llm cuts its input into `batch_size` slices; the engine's planner packs each slice by token budget."""

    batch_size = 256

    def __init__(self, model_id: str, model: str):
        self.model_id = model_id
        self.model = model

    def embed_batch(self, items: Iterable[str], *, key: str | None = None) -> Iterator[list[float]]:
        return iter(_engine(self.model).embed(list(items)).tolist())
