"""The OpenAI-compatible server: the app, its wire shapes and errors, the served models and the metrics."""
