#!/bin/sh
# Call a running `embed serve` (default http://127.0.0.1:8000) with curl.
# Start one first:  embed serve            (add --api-key KEY and set EMBED_API_KEY=KEY to require a key)
set -eu
URL="${EMBED_URL:-http://127.0.0.1:8000}"
AUTH="Authorization: Bearer ${EMBED_API_KEY:-none}"

curl -sS "$URL/health"; echo
curl -sS "$URL/v1/models" -H "$AUTH"; echo

# One text, float vectors, cut to 8 dimensions (then re-normalized).
curl -sS "$URL/v1/embeddings" -H "$AUTH" -H "Content-Type: application/json" \
  -d '{"model": "all-MiniLM-L6-v2", "input": "Hello world", "dimensions": 8}'; echo

# Several texts at once, as base64 (little-endian float32): smaller and faster to parse.
curl -sS "$URL/v1/embeddings" -H "$AUTH" -H "Content-Type: application/json" \
  -d '{"input": ["Hello world", "東京は日本の首都です。"], "encoding_format": "base64"}'; echo

# Token ids, embedded exactly as given ([CLS] hello world [SEP] for all-MiniLM-L6-v2).
curl -sS "$URL/v1/embeddings" -H "$AUTH" -H "Content-Type: application/json" \
  -d '{"input": [[101, 7592, 2088, 102]], "dimensions": 4}'; echo
