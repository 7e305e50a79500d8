"""Encoder architectures embed runs itself (the rest come from mlx-embeddings and mlx-lm)."""
