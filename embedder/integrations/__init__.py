"""Adapters that let llm, LangChain and LlamaIndex call embed's engine in-process."""
