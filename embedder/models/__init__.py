"""The model files embed runs itself (encoders, EmbeddingGemma), and the loader; decoder LLMs come from mlx-lm."""
