"""Which of a model's named prompts (config_sentence_transformers.json) a query or a document gets."""

from embedder import EmbeddingEngine

QUERY_NAMES = ("query",)
DOCUMENT_NAMES = ("document", "passage", "corpus")  # sentence-transformers' encode_document order


def _first(engine: EmbeddingEngine, names: tuple[str, ...]) -> str | None:
    """None lets the engine fall back to its default prompt, as `engine.embed` does for any text."""
    prompts = engine.info()["prompts"]  # config_sentence_transformers.json; loads the model on first use
    return next((name for name in names if name in prompts), None)


def embed_queries(engine: EmbeddingEngine, texts: list[str]) -> list[list[float]]:
    """Retrieval models are trained with a query prompt; searching without it loses recall."""
    return engine.embed(texts, prompt_name=_first(engine, QUERY_NAMES)).tolist()


def embed_documents(engine: EmbeddingEngine, texts: list[str]) -> list[list[float]]:
    return engine.embed(texts, prompt_name=_first(engine, DOCUMENT_NAMES)).tolist()
