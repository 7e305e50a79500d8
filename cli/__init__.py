"""The `embed` command line: a thin Typer front over the embedder library (no MLX at import time)."""
