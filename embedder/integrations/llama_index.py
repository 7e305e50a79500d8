"""LlamaIndex `BaseEmbedding` over embed's engine: vectors computed in-process, no server."""

import asyncio

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from embedder import DEFAULT_MODEL, EmbeddingEngine
from embedder.integrations import prompts


class EmbedEmbedding(BaseEmbedding):
    """Queries get the model's "query" prompt, documents its "document" (or "passage", "corpus") one, if defined."""

    _engine: EmbeddingEngine = PrivateAttr()

    def __init__(self, model: str = DEFAULT_MODEL, *, engine: EmbeddingEngine | None = None,
                 embed_batch_size: int = 256, **engine_options):
        """`engine_options` are EmbeddingEngine's (max_length, dtype, batch_tokens...); `engine` shares one.
        LlamaIndex slices its input by `embed_batch_size`; the engine packs each slice by token budget."""
        engine = engine or EmbeddingEngine(model, **engine_options)
        super().__init__(model_name=engine.model_name, embed_batch_size=embed_batch_size)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "EmbedEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return prompts.embed_queries(self._engine, [query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return prompts.embed_documents(self._engine, [text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return prompts.embed_documents(self._engine, texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        """Tokenizing and waiting for the engine block: a worker thread keeps the event loop free."""
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
