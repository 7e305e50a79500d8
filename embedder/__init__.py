"""embed: batch text embeddings on MLX. `EmbeddingEngine` is the entry point."""

__all__ = ["EmbeddingEngine", "DEFAULT_MODEL"]


def __getattr__(name: str):
    # Lazy, so `embed --help` and the readers never import MLX.
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
