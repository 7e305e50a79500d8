"""LangChain `Embeddings` over embed's engine: vectors computed in-process, no server."""

import asyncio

from langchain_core.embeddings import Embeddings

from embedder import DEFAULT_MODEL, EmbeddingEngine
from embedder.integrations import prompts


class EmbedEmbeddings(Embeddings):
    """Queries get the model's "query" prompt, documents its "document" (or "passage", "corpus") one, if defined."""

    def __init__(self, model: str = DEFAULT_MODEL, *, engine: EmbeddingEngine | None = None, **engine_options):
        """`engine_options` are EmbeddingEngine's (max_length, dtype, batch_tokens...); `engine` shares one."""
        self.engine = engine or EmbeddingEngine(model, **engine_options)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return prompts.embed_documents(self.engine, texts)

    def embed_query(self, text: str) -> list[float]:
        return prompts.embed_queries(self.engine, [text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Tokenizing and waiting for the engine block: a worker thread keeps the event loop free."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
