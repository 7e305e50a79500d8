"""`embed_dataset`: embedding as one stage of a user's own Ray Data pipeline (read -> chunk -> embed -> write)."""

from __future__ import annotations

import numpy as np

from embedder.errors import EmbedError, InputError
from embedder.hub import DEFAULT_MODEL
from embedder.io.writers import OutputSpec, arrow_schema, output_arrays


def embed_dataset(ds, model: str = DEFAULT_MODEL, text_column: str = "text", *, prompt: str | None = None,
                  prompt_name: str | None = None, dimensions: int | None = None, normalize: bool = True,
                  batch_size: int = 1024, concurrency: int | None = None, num_cpus: float | None = None,
                  num_gpus: float | None = None, **engine_options):
    """`ds` with two more columns: `embedding` (fixed_size_list<float32>[dim]) and `tokens` (int32); a SPLADE
    model's vectors as `indices` (list<int32>) and `values` (list<float32>) instead of `embedding`, a sequence
    classifier's `label`, `score` and `scores` (each label's probability).

    Each actor loads the model once; the rows Ray hands it (`batch_size` at a time) go through the engine's
    planner (length-sorted, token-budget batches, lanes), never padded to Ray's batch. By default one actor per
    GPU, else one per CPU node using its cores; `engine_options` go to `EmbeddingEngine` (max_length, dtype...).
    """
    ray = require_ray()
    if dimensions is not None and dimensions < 1:  # before any actor starts; the model's bound is the engine's
        raise InputError(f"dimensions must be at least 1, got {dimensions}", "dimensions")
    actors, resources, lanes = actor_plan()
    if num_cpus is not None or num_gpus is not None:
        resources = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None}
    engine_options.setdefault("lanes", lanes)
    if not isinstance(ds, ray.data.Dataset):
        raise TypeError(f"embed_dataset takes a ray.data.Dataset, not {type(ds).__name__}")
    return ds.map_batches(
        BatchEmbedder, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency or actors),
        fn_constructor_kwargs={"model": model, "text_column": text_column, "prompt": prompt,
                               "prompt_name": prompt_name, "dimensions": dimensions, "normalize": normalize,
                               "engine_options": engine_options},
        **resources,
    )


def require_ray():
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise EmbedError(f"Ray Data is not installed ({e.name} is missing): pip install 'embed[ray]'") from None
    return ray


def actor_plan() -> tuple[int, dict, int | None]:
    """(actors, resources per actor, lanes): one actor per GPU; else one per CPU node, leaving a core to Ray
    Data's reads and using the node's cores through lanes."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1}, None
    cpus = [int(node["Resources"]["CPU"]) for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU")]
    if not cpus:
        raise EmbedError("the Ray cluster has no CPUs or GPUs to run on")
    return len(cpus), {"num_cpus": max(1, min(cpus) - 1)}, min(cpus)


class BatchEmbedder:
    """A Ray Data actor: the engine, loaded once; each call embeds one Arrow batch's text column."""

    def __init__(self, model: str, text_column: str, prompt: str | None, prompt_name: str | None,
                 dimensions: int | None, normalize: bool, engine_options: dict):
        from embedder.engine import EmbeddingEngine

        engine = self.engine = EmbeddingEngine(model, **engine_options)
        engine.load()
        self.text_column, self.prompt, self.query = text_column, prompt, prompt_name == "query"
        self.prompt_name = engine.output_prompt_name(prompt, prompt_name)
        self.dimensions, self.normalize = dimensions, normalize
        dim = engine.check_dimensions(dimensions) or engine.dim
        self.spec = OutputSpec(None, dim, sparse=engine.sparse, labels=engine.labels if engine.cross_encoder else (),
                               multi_vector=engine.multi_vector)
        self.fields = arrow_schema(self.spec).names[1:-1]  # the output's own columns, between id and tokens

    def __call__(self, table):
        import pyarrow as pa

        if self.text_column not in table.column_names:
            raise InputError(f"no column {self.text_column!r} (columns: {', '.join(table.column_names)}); "
                             "see text_column")
        texts = table[self.text_column].to_pylist()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"column {self.text_column!r}: a row holds {type(text).__name__}, not a string "
                                 f"(row {i} of its batch)")
        engine = self.engine
        ids = engine.tokenize(texts, prompt=self.prompt, prompt_name=self.prompt_name)
        skip = engine.prompt_skip(self.prompt, self.prompt_name)
        vectors = engine.submit_output_rows(ids, query=self.query, dimensions=self.dimensions,
                                            normalize=None if self.normalize else False, skip=skip).result()
        tokens = np.array(engine.embedded_tokens(ids, query=self.query), np.int32)
        if not self.spec.multi_vector:
            vectors = vectors.reshape(len(ids), self.spec.dim)
        for field, column in zip(self.fields, output_arrays(vectors, tokens, self.spec)):
            table = table.append_column(field, column)
        return table.append_column("tokens", pa.array(tokens))
