"""The server's counters, written in Prometheus' text format: requests, inputs, tokens, queue, batches, latency."""

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
EMBEDDING_PATHS = frozenset({"/v1/embeddings", "/embeddings", "/embed", "/"})  # OpenAI's, infinity's, TEI's two
# The API's paths, each counted by name; any other path counts as "other" (a scanner's paths would grow the table).
PATHS = EMBEDDING_PATHS | {"/embed_all", "/embed_sparse", "/pooling", "/v1/rerank", "/rerank", "/v2/rerank",
                           "/score", "/v1/score", "/predict", "/classify", "/v1/classify", "/tokenize",
                           "/detokenize", "/decode", "/similarity", "/info", "/v1/models", "/models", "/health",
                           "/metrics"}

# engine.stats() key -> (metric name, type, help)
ENGINE_STATS = {
    "queue_depth": ("embed_engine_queue_rows", "gauge", "Inputs waiting in the engine's queue."),
    "batches": ("embed_engine_batches_total", "counter", "Forward batches run; rows_total / batches_total is the mean batch size."),
    "rows": ("embed_engine_rows_total", "counter", "Inputs embedded by the engine."),
    "tokens": ("embed_engine_tokens_total", "counter", "Tokens embedded, without padding."),
    "padded_tokens": ("embed_engine_padded_tokens_total", "counter", "Tokens run, padding included."),
    "busy_seconds": ("embed_engine_busy_seconds_total", "counter", "Seconds during which at least one batch was running."),
    "lanes": ("embed_engine_lanes", "gauge", "Batches the engine computes at once (--lanes)."),
}


@dataclass
class Histogram:
    """Cumulative buckets are computed when rendered; observing is one bisect."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        counts = self.counts or [0] * (len(self.bounds) + 1)
        out, running = [], 0
        for bound, count in zip([*map(_number, self.bounds), "+Inf"], counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return [*out, f"{name}_sum {_number(self.total)}", f"{name}_count {running}"]


@dataclass
class Metrics:
    """Updated from the event loop only, so no lock: one request's numbers never interleave."""

    requests: Counter = field(default_factory=Counter)  # (path, status) -> count
    inputs: int = 0
    tokens: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    request_inputs: Histogram = field(default_factory=lambda: Histogram(INPUT_BUCKETS))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[path if path in PATHS else "other", status] += 1
        if path in EMBEDDING_PATHS:
            self.latency.observe(seconds)

    def observe_embedding(self, inputs: int, tokens: int) -> None:
        self.request_inputs.observe(inputs)
        self.inputs += inputs
        self.tokens += tokens

    def render(self, in_flight: int, engines: Mapping[str, Mapping[str, float]]) -> str:
        """`engines`: model name -> engine.stats() of each loaded model."""
        out = _family("embed_requests_total", "counter", "HTTP requests by path and status.")
        out += [f'embed_requests_total{{path="{_label(p)}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        out += _family("embed_inputs_total", "counter", "Inputs embedded.") + [f"embed_inputs_total {self.inputs}"]
        out += _family("embed_tokens_total", "counter", "Tokens embedded (usage.total_tokens).") + [f"embed_tokens_total {self.tokens}"]
        out += _family("embed_in_flight_inputs", "gauge", "Inputs admitted and not yet answered; bounded by --max-queue.")
        out += [f"embed_in_flight_inputs {in_flight}"]
        out += _family("embed_request_inputs", "histogram", "Inputs per embeddings request.")
        out += self.request_inputs.lines("embed_request_inputs")
        out += _family("embed_request_seconds", "histogram", "Latency of embeddings requests.")
        out += self.latency.lines("embed_request_seconds")
        for key, (name, kind, help_text) in ENGINE_STATS.items():
            out += _family(name, kind, help_text)
            out += [f'{name}{{model="{_label(model)}"}} {_number(stats.get(key, 0))}' for model, stats in engines.items()]
        return "\n".join(out) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
