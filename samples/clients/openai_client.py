"""Call a running `embed serve` with the official openai SDK (pip install openai).

Start a server first, e.g. `embed serve --api-key sk-local`, then: python openai_client.py
EMBED_URL and EMBED_API_KEY override the defaults below.
"""

import os

import numpy as np
from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("EMBED_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("EMBED_API_KEY", "sk-local"),  # any string when the server runs without --api-key
)

print([m.id for m in client.models.list()])

texts = ["How do I sort a list in Python?", "sorted(iterable) returns a new sorted list", "The weather is nice today"]
reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the SDK asks for base64 and decodes it
vectors = np.array([d.embedding for d in reply.data])
print(vectors.shape, "tokens:", reply.usage.total_tokens)
print("similarity of the question to each text:", np.round(vectors @ vectors[0], 3))

small = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], dimensions=64, encoding_format="float")
print(len(small.data[0].embedding), "dimensions, norm", round(float(np.linalg.norm(small.data[0].embedding)), 4))
