"""EmbeddingEngine: the one place where text becomes vectors; a single worker thread owns MLX."""

import atexit
import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from .native.blas import preload_blas, set_threads

preload_blas()  # must run before mlx.core is first imported

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from .batching import CPU_BATCH, GPU_BATCH, packed  # noqa: E402
from .errors import InputError, InputTooLong, ModelError, NotReady, located, renumbered  # noqa: E402
from .forward import BatchForward  # noqa: E402
from .hub import DEFAULT_MODEL, canonical_id  # noqa: E402
from .images import ImageRow  # noqa: E402
from .io.readers import read_bytes  # noqa: E402
from .long_inputs import Windows, combine, combine_max  # noqa: E402
from .models.loading import ACTIVATIONS, LoadedModel, load_model  # noqa: E402
from .multi_vector import MultiVectorRows, maxsim, projections  # noqa: E402
from .options import EngineOptions  # noqa: E402
from .pooling import largest_only, truncate_dims  # noqa: E402
from .pooling import normalize as l2_normalize  # noqa: E402
from .quantize import sparse_rows  # noqa: E402
from .scheduler import Scheduler  # noqa: E402
from .static_sparse import QueryTokens, StaticSparse  # noqa: E402

__all__ = ["EmbeddingEngine", "DEFAULT_MODEL", "class_scores", "ranked", "split_pairs"]


_LIVE_ENGINES: "weakref.WeakSet[EmbeddingEngine]" = weakref.WeakSet()
MAX_CPU_LANES = 8


def default_lanes() -> int:
    """A GPU runs one batch at a time. On a CPU, MLX runs a stream's element-wise kernels on one core, so one
    lane per core, each with a one-thread BLAS, keeps every core busy (2 cores, passages: +15% over one lane
    with a two-thread BLAS; short sentences: the same)."""
    return 1 if mx.default_device() == mx.gpu else min(_cores(), MAX_CPU_LANES)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[tuple[int, float]]:
    """(index, score) pairs of one score per document, best first, ties in input order, the first `top_n` (all when
    None)."""
    order = np.argsort(-scores, kind="stable")[:top_n]
    return [(int(i), float(scores[i])) for i in order]


def class_scores(logits: np.ndarray, problem_type: str | None = None) -> np.ndarray:
    """A classifier's logits as transformers' text-classification pipeline scores them by default: as they are
    for a regression, a sigmoid each for one label or a multi-label model, else a softmax over the labels."""
    if problem_type == "regression":
        return logits
    if logits.shape[1] == 1 or problem_type == "multi_label_classification":
        return np.exp(-np.logaddexp(0, -logits)).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def split_pairs(inputs: Sequence[str | Sequence[str]]) -> tuple[list[int], list[int]]:
    """The positions of the single texts among `inputs`, and of the pairs."""
    singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    return singles, [i for i, x in enumerate(inputs) if not isinstance(x, str)]


def _distinct(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Each distinct text once, in order of first use, and each one's place in that list."""
    unique = list(dict.fromkeys(texts))
    return unique, {text: i for i, text in enumerate(unique)}


def _resolved(value: np.ndarray) -> Future:
    """A future that is already done: nothing to queue."""
    future: Future = Future()
    future.set_result(value)
    return future


@atexit.register
def _stop_all() -> None:
    """MLX aborts at exit if a thread still holds its streams (ml-explore/mlx#3126): stop workers first."""
    for engine in list(_LIVE_ENGINES):
        engine.unload()
    mx.clear_streams()


class EmbeddingEngine:
    """Tokenize, queue, batch by padded-token budget, run, pool; concurrent submits share batches.

    The model, tokens and prompts are here; the queue, planner and lanes are `Scheduler`'s, and a batch's
    forward pass is `BatchForward`'s."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        max_batch_rows: int | None = None,
        dtype: str | None = None,
        normalize: bool | None = None,
        pooling: str | None = None,
        max_active_dims: int | None = None,
        prompt: str | None = None,
        truncate: bool = True,
        lanes: int | None = None,
        long_input: str | None = None,
        chunk_overlap: int = 0,
        options: EngineOptions | None = None,
    ):
        """The settings as keywords, or `options` (an `EngineOptions`, as the CLI, server and pipeline pass)."""
        self.options = options or EngineOptions(
            model=model, max_length=max_length, batch_tokens=batch_tokens, max_batch_rows=max_batch_rows,
            dtype=dtype, normalize=normalize, pooling=pooling, max_active_dims=max_active_dims, prompt=prompt,
            truncate=truncate, lanes=lanes, long_input=long_input, chunk_overlap=chunk_overlap)
        self.model_name = self.options.model
        self.lanes = self.options.lanes or default_lanes()
        shape = GPU_BATCH if mx.default_device() == mx.gpu else CPU_BATCH
        self.batch_shape = dataclasses.replace(
            shape, tokens=self.options.batch_tokens or shape.tokens, rows=self.options.max_batch_rows or shape.rows
        )
        self._model: LoadedModel | None = None
        self._windows: Windows | None = None  # long inputs chunked: how they are cut
        self._multi: MultiVectorRows | None = None  # a late-interaction model's token rules
        self._static: StaticSparse | None = None  # an inference-free SPLADE model's query side
        self._scheduler = Scheduler(self.lanes, self.batch_shape, thread_exit=mx.clear_streams)
        self._lock = threading.Lock()
        self._unloaded = False  # by unload(): new work is refused until load() is called again

    # ---- life cycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Start the worker threads and load the model in the planner's; raises the load error, if any."""
        with self._lock:
            self._unloaded = False
            _LIVE_ENGINES.add(self)
        self._scheduler.start(self._open)

    def unload(self) -> None:
        """Stop the workers after the work already queued; until load() is called again, new work is refused."""
        with self._lock:
            self._unloaded = True
        self._scheduler.stop()
        self._model = None

    def _open(self) -> BatchForward:
        """In the planner thread: the model, loaded, and on a CPU its kernels built and BLAS threads set."""
        model = load_model(dataclasses.replace(self.options, batch_tokens=self.batch_shape.tokens),
                           budget_given=self.options.batch_tokens is not None)
        forward = BatchForward(model)
        if model.spec.scores is not None and self.options.long_input_mode == "chunk":
            raise ModelError(f"{model.model_id} is a cross-encoder: it scores texts and pairs, which are cut (a pair's "
                             "longest text first) or refused, never chunked; use long_input truncate or error",
                             "long_input")
        if model.spec.multi_vector is not None and self.options.long_input_mode == "chunk":
            raise InputError("long_input chunk does not apply to a multi-vector (ColBERT) model: its vectors are its "
                             "tokens', each text cut at the model's query or document length", "long_input")
        if self.options.long_input_mode == "chunk":
            self._windows = Windows(*model.tokenizer.special_tokens(), model.max_length, self.options.chunk_overlap)
        if model.spec.multi_vector is not None:
            self._multi = MultiVectorRows.of(model.spec.multi_vector, model.tokenizer, projections(model.dense),
                                             model.path, model.max_length)
        if model.spec.splade is not None and model.spec.splade.query_weights is not None:
            self._static = StaticSparse.load(model.spec.splade.query_weights)
        if mx.default_device() == mx.cpu:
            set_threads(max(1, _cores() // self.lanes))
            forward.build_kernels()
        packs = getattr(model.module, "packs_tokens", None)
        if packs is not None and packs():  # read by the planner, this thread, from now on
            self.batch_shape = self._scheduler.batch_shape = packed(self.batch_shape)
        self._model = model
        return forward

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        """The loaded model; the first use loads it, but an unloaded engine refuses until load() is called."""
        if self._unloaded:
            raise NotReady("the engine was unloaded; call load() to use it again")
        if self._model is None:  # set once the planner has loaded it; a request reads this ~9 times (1.5 us a load())
            self.load()
        if self._model is None:
            raise NotReady("the engine was unloaded")
        return self._model

    @property
    def model_id(self) -> str:
        return self._model.model_id if self._model else canonical_id(self.model_name)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def max_length(self) -> int:
        return self.model.max_length

    @property
    def vocab_size(self) -> int:
        return self.model.tokenizer.vocab_size

    @property
    def cross_encoder(self) -> bool:
        """A sequence classifier (a reranker, or a classifier of texts): it scores texts and pairs, and embeds
        nothing."""
        return self.model.spec.scores is not None

    @property
    def sparse(self) -> bool:
        """A SPLADE encoder: one weight per vocabulary entry, most of them zero; stored as (indices, values)."""
        return self.model.spec.splade is not None

    @property
    def multi_vector(self) -> bool:
        """A late-interaction (ColBERT) model: a vector per token (`multi_vectors`), texts compared by MaxSim."""
        return self.model.spec.multi_vector is not None

    @property
    def normalizes(self) -> bool:
        return self.model.spec.normalize if self.options.normalize is None else self.options.normalize

    def info(self) -> dict:
        """What the model is and what embed does with it: for file metadata, /v1/models and `embed models`."""
        m = self.model
        return {
            "model": m.model_id,
            "path": str(m.path),
            "architecture": m.architecture,
            "dim": m.dim,
            "max_length": m.max_length,
            "pooling": "+".join(m.spec.pooling),
            "dense_layers": len(m.dense),
            "normalize": self.normalizes,
            "dtype": m.dtype,
            "quantization": m.quantization,
            "prompts": m.spec.prompts,
            "default_prompt_name": m.spec.default_prompt_name,
            "device": str(mx.default_device()),
            "long_input": self.options.long_input_mode,  # a chunked file's vectors are windows' means, not cuts
            "chunk_overlap": self.options.chunk_overlap,
            **({"labels": list(self.labels)} if self.cross_encoder else {}),
            **({"max_active_dims": m.spec.splade.max_active_dims} if self.sparse else {}),
            **({"multi_vector": dataclasses.asdict(m.spec.multi_vector)} if self.multi_vector else {}),
        }

    def stats(self) -> dict:
        return self._scheduler.stats()

    # ---- tokens -----------------------------------------------------------------------------

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """An explicit prompt wins; then a named one from config_sentence_transformers.json; then the defaults."""
        spec = self.model.spec
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in spec.prompts:
                known = ", ".join(spec.prompts) or "none"
                raise InputError(f"unknown prompt_name {prompt_name!r}; this model's prompts: {known}", "prompt_name")
            return spec.prompts[prompt_name]
        if self.options.prompt is not None:
            return self.options.prompt
        if spec.default_prompt_name is not None:
            return spec.prompts.get(spec.default_prompt_name)
        return None

    def tokenize(
        self, texts: Sequence[str], *, prompt: str | None = None, prompt_name: str | None = None,
        keep_last: int | None = None,
    ) -> list[list[int]]:
        """Token ids with special tokens, long ones as `long_input` says (truncated to max_length by default);
        `keep_last` keeps each text's last N tokens instead, at most max_length (vLLM's truncate_prompt_tokens)."""
        if isinstance(texts, str):
            raise TypeError("tokenize() takes a list of texts, not one string")
        self.check_keep_last(keep_last)
        prompt = self.resolve_prompt(prompt, prompt_name)  # which loads the model, and `_static` with it
        if prompt_name == "query" and self._static is not None:  # weighed from a table: `QueryTokens`
            return self._static.rows(texts, prompt)
        return self.model.tokenizer.encode(list(texts), prompt, keep_last)

    def check_keep_last(self, keep_last: int | None) -> None:
        if keep_last is not None and not 1 <= keep_last <= self.max_length:
            raise InputError(f"truncate_prompt_tokens must be -1 or between 1 and {self.max_length} for this model, "
                             f"got {keep_last}", "truncate_prompt_tokens")

    def tokens_per_text(self, texts: Sequence[str], *, prompt: str | None = None) -> list[int]:
        return [len(ids) for ids in self.tokenize(texts, prompt=prompt)]

    def count_tokens(self, texts: Sequence[str], *, prompt: str | None = None) -> int:
        return sum(self.tokens_per_text(texts, prompt=prompt))

    def prompt_skip(self, prompt: str | None = None, prompt_name: str | None = None) -> int:
        """Tokens of `prompt` that pooling leaves out, for models saved with include_prompt=False."""
        prompt = self.resolve_prompt(prompt, prompt_name)
        if not prompt or self.model.spec.include_prompt:
            return 0
        return len(self.model.tokenizer.encode([prompt])[0]) - 1

    # ---- vectors ----------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        dimensions: int | None = None,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32 vectors in input order."""
        ids = self.tokenize(texts, prompt=prompt, prompt_name=prompt_name)
        skip = self.prompt_skip(prompt, prompt_name)
        return self.submit(ids, dimensions=dimensions, normalize=normalize, skip=skip).result()

    def embed_sparse(self, texts: Sequence[str], *, prompt: str | None = None,
                     prompt_name: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """A SPLADE model's vectors as each text's nonzero (indices, values), in index order (`embed` gives them
        dense, vocabulary-wide)."""
        if not self.sparse:
            raise InputError(f"{self.model_id} is a dense model; sparse vectors come from a SPLADE model", "model")
        return sparse_rows(self.embed(texts, prompt=prompt, prompt_name=prompt_name))

    def embed_images(self, images: Sequence[bytes | str | os.PathLike], *, dimensions: int | None = None,
                     normalize: bool | None = None) -> np.ndarray:
        """(len(images), dim) vectors of image files (paths) or their encoded bytes (PNG, JPEG...), in the space of
        this model's text vectors; an image model (SigLIP) only."""
        where = [str(i) if isinstance(i, (str, os.PathLike)) else f"image {n}" for n, i in enumerate(images)]
        data = [read_bytes(i) if isinstance(i, (str, os.PathLike)) else i for i in images]
        return self.submit(self.image_rows(data, where), dimensions=dimensions, normalize=normalize).result()

    def input_rows(self, inputs: Sequence[str | bytes], *, prompt: str | None = None, prompt_name: str | None = None,
                   keep_last: int | None = None, where: Sequence[str] | None = None) -> list[list[int] | ImageRow]:
        """Rows for `submit`, each in its input's place: texts tokenized (as `tokenize`), images (encoded bytes)
        preprocessed (as `image_rows`); `where` names each input in errors."""
        where = where or [f"input {k}" for k in range(len(inputs))]
        texts = [k for k, item in enumerate(inputs) if isinstance(item, str)]
        images = [k for k, item in enumerate(inputs) if not isinstance(item, str)]
        rows: list = [None] * len(inputs)
        if texts:
            try:
                ids = self.tokenize([inputs[k] for k in texts], prompt=prompt, prompt_name=prompt_name,
                                    keep_last=keep_last)
            except InputError as e:
                raise located(e, [where[k] for k in texts]) from e
            for k, row in zip(texts, ids):
                rows[k] = row
        if images:
            for k, row in zip(images, self.image_rows([inputs[k] for k in images], [where[k] for k in images])):
                rows[k] = row
        return rows

    def image_rows(self, images: Sequence[bytes], where: Sequence[str]) -> list[ImageRow]:
        """Encoded images decoded and preprocessed for `submit`, where they queue and batch beside token rows;
        `where` names each in errors."""
        model = self.model
        if model.images is None:
            raise InputError(f"{where[0]}: {model.model_id} embeds text only; images need an image model such as "
                             "SigLIP", "input")
        return [ImageRow(model.images.pixels(data, name), model.image_patches) for data, name in zip(images, where)]

    def embed_tokens(
        self, ids: Sequence[Sequence[int]], *, dimensions: int | None = None, normalize: bool | None = None
    ) -> np.ndarray:
        """Embed token ids exactly as given: no special tokens are added."""
        return self.submit(ids, dimensions=dimensions, normalize=normalize).result()

    def submit(
        self,
        ids: Sequence[Sequence[int] | ImageRow],
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        skip: int = 0,
        then: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Future:
        """Queue rows of token ids (or `image_rows`); the worker packs waiting jobs together. Cancel the future to drop
        them.
        `then` maps the finished vectors to the future's result."""
        model = self.model
        self.check_embeds()
        if ids and all(isinstance(row, QueryTokens) for row in ids):  # an inference-free model's queries
            unit = self.normalizes if normalize is None else normalize
            out = largest_only(self._static.vectors(ids), model.spec.splade.max_active_dims)
            out = l2_normalize(out) if unit else out
            return _resolved(then(out) if then else out)
        if self.multi_vector:
            raise InputError(f"{model.model_id} is a multi-vector (ColBERT) model: a vector per token, not one per "
                             "text; ask multi_vectors (TEI's /embed_all, vLLM's /pooling token_embed)", "model")
        rows = self._validate(ids, dimensions)
        if not rows:
            return _resolved(np.zeros((0, dimensions or model.dim), np.float32))
        unit = self.normalizes if normalize is None else normalize
        pieces = [self._windows.split(row) if self._windows and not isinstance(row, ImageRow) else [row]
                  for row in rows]
        windows = [w for piece in pieces for w in piece]
        skips = [skip if k == 0 else 0 for piece in pieces for k in range(len(piece))]  # a prompt leads window 1

        sparse = model.spec.splade
        max_pooled = sparse is not None and sparse.strategy == "max"

        def finish(out: np.ndarray) -> np.ndarray:
            if len(windows) != len(rows) and max_pooled:
                out = combine_max(out, [len(piece) for piece in pieces])
            elif len(windows) != len(rows):
                out = combine(out, [len(piece) for piece in pieces], [len(w) for w in windows])
            if sparse is not None:  # after a long text's windows are combined: its own cap, not each window's
                out = largest_only(out, sparse.max_active_dims)
            out = truncate_dims(out, dimensions)
            out = l2_normalize(out) if unit else np.ascontiguousarray(out)
            return then(out) if then else out

        return self._scheduler.submit(windows, skips, finish)

    def token_embeddings(self, texts: Sequence[str], *, prompt: str | None = None,
                         prompt_name: str | None = None) -> list[np.ndarray]:
        """Each text's token vectors, (tokens, dim) float32: the encoder's last hidden state at every token, special
        tokens and prompt included, before pooling, projection or normalization (sentence-transformers'
        `output_value="token_embeddings"`, TEI's /embed_all); for late interaction and token-level work."""
        return self.submit_token_embeddings(self.tokenize(texts, prompt=prompt, prompt_name=prompt_name)).result()

    def submit_token_embeddings(self, ids: Sequence[Sequence[int]]) -> Future:
        """Queue token-id rows for `token_embeddings`; the future gives a list of (tokens, dim) arrays."""
        model = self.model
        self.check_embeds()
        if model.images is not None:
            raise InputError(f"{model.model_id} is an image model; token vectors are a text encoder's", "model")
        rows = self._validate(ids, None)
        for i, row in enumerate(rows):
            if len(row) > model.max_length:  # long_input chunk keeps them whole: one set of token vectors has no room
                raise InputTooLong(f"input {i} has {len(row)} tokens, more than the model's maximum of "
                                   f"{model.max_length}; token vectors need texts cut to it (long_input truncate)",
                                   index=i)
        if not rows:
            return _resolved([])
        return self._scheduler.submit(rows, list(map(len, rows)), lambda out: out, per_token=True)

    # ---- late interaction --------------------------------------------------------------------

    def multi_vectors(self, texts: Sequence[str], *, query: bool = False, prompt: str | None = None,
                      prompt_name: str | None = None, dimensions: int | None = None) -> list[np.ndarray]:
        """A late-interaction (ColBERT) model's vectors for each text, (vectors, dim) float32, as
        sentence-transformers' MultiVectorEncoder.encode_query (`query`) or encode_document gives them: the side's
        prompt (its marker), cut to its length, a query expanded, a document's skiplisted tokens dropped;
        `dimensions` as its `truncate_dim`."""
        ids = self.tokenize(texts, prompt=prompt, prompt_name=self.side_prompt(query, prompt, prompt_name))
        return self.submit_multi_vectors(ids, query=query, dimensions=dimensions).result()

    def side_prompt(self, query: bool, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """The prompt a query or a document takes unless one is given: the model's "query" or "document" prompt,
        as MultiVectorEncoder's encode_query and encode_document take it."""
        side = "query" if query else "document"
        if prompt is None and prompt_name is None and side in self.model.spec.prompts:
            return side
        return prompt_name

    def output_prompt_name(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt name a file's texts take: a multi-vector model's document prompt unless `prompt_name` names
        another ("query" embeds them as queries); otherwise `prompt_name`."""
        return self.side_prompt(prompt_name == "query", prompt, prompt_name) if self.multi_vector else prompt_name

    def submit_output_rows(self, ids: Sequence[Sequence[int] | ImageRow], *, query: bool = False,
                           dimensions: int | None = None, normalize: bool | None = None, skip: int = 0) -> Future:
        """Queue token rows for what a file's rows hold with this model: a classifier's score per label, a
        multi-vector model's token vectors (a query's, or a document's), or one vector per text."""
        if self.cross_encoder:
            return self.submit_class_rows(ids)
        if self.multi_vector:
            return self.submit_multi_vectors(ids, query=query, dimensions=dimensions)
        return self.submit(ids, dimensions=dimensions, normalize=normalize, skip=skip)

    def submit_multi_vectors(self, ids: Sequence[Sequence[int]], *, query: bool = False,
                             dimensions: int | None = None) -> Future:
        """Queue token-id rows (prompt included) for `multi_vectors`; the future gives a list of arrays, each token
        vector cut to `dimensions` and normalized again (MultiVectorEncoder's `truncate_dim`)."""
        multi = self._multi_rows()
        rows, keys = multi.rows(self._validate(ids, dimensions), query)
        if not rows:
            return _resolved([])
        return self._scheduler.submit(rows, keys, lambda states: [multi.vectors(row, s, query, dimensions)
                                                                  for row, s in zip(rows, states)], per_token=True)

    def _multi_rows(self) -> MultiVectorRows:
        if not self.multi_vector:  # which loads the model, and `_multi` with it
            raise InputError(f"{self.model_id} is not a multi-vector (ColBERT) model: it gives one vector per text",
                             "model")
        return self._multi

    def _submit_maxsim(self, firsts: Sequence[str], seconds: Sequence[str]) -> tuple[Future, int]:
        """Each (query, document) pair's MaxSim, each distinct query and document embedded once, in one job."""
        multi = self._multi_rows()
        (queries, q_at), (documents, d_at) = _distinct(firsts), _distinct(seconds)
        q_rows, q_keys = multi.rows(self._pair_texts(queries, self.side_prompt(True), firsts), True)
        d_rows, d_keys = multi.rows(self._pair_texts(documents, self.side_prompt(False), seconds), False)
        mean = multi.spec.mean_maxsim

        def scores(states: list[np.ndarray]) -> np.ndarray:
            q = [multi.vectors(r, s, True) for r, s in zip(q_rows, states)]
            d = [multi.vectors(r, s, False) for r, s in zip(d_rows, states[len(q_rows):])]
            return np.array([maxsim(q[q_at[a]], d[d_at[b]], mean) for a, b in zip(firsts, seconds)], np.float32)

        tokens = sum(q_keys) + sum(d_keys)
        return self._scheduler.submit(q_rows + d_rows, q_keys + d_keys, scores, per_token=True), tokens

    def _submit_inference_free_scores(self, firsts: Sequence[str], seconds: Sequence[str]) -> tuple[Future, int]:
        """An inference-free SPLADE model's pairs: each query weighed from its table, each document through the
        model, scored by their dot product (SparseEncoder's similarity of encode_query and encode_document)."""
        (queries, q_at), (documents, d_at) = _distinct(firsts), _distinct(seconds)
        q_ids, d_ids = self._pair_texts(queries, "query", firsts), self._pair_texts(documents, None, seconds)
        q = self.submit(q_ids, normalize=False).result()  # no model runs: resolved at once

        def scores(d: np.ndarray) -> np.ndarray:
            return np.array([q[q_at[a]] @ d[d_at[b]] for a, b in zip(firsts, seconds)], np.float32)

        return self.submit(d_ids, normalize=False, then=scores), sum(map(len, q_ids)) + sum(map(len, d_ids))

    def _pair_texts(self, texts: list[str], prompt_name: str | None, *sides: Sequence[str]) -> list[list[int]]:
        """Distinct texts of some pairs, tokenized; an error about one is retold about the first pair holding it, in
        the first of `sides` (the pairs' first or second texts) that holds it."""
        try:
            return self.tokenize(texts, prompt_name=prompt_name)
        except InputError as e:
            if e.index is None:
                raise
            pair = next(list(side).index(texts[e.index]) for side in sides if texts[e.index] in side)
            raise e.about(f"input {pair}", pair) from e

    # ---- scores -----------------------------------------------------------------------------

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Each (first, second) text pair's score: a cross-encoder's, equal to sentence-transformers'
        CrossEncoder.predict ((pairs,) for one label, (pairs, labels) for several); for an embedding model the cosine
        similarity of the two texts' vectors (vLLM's score for embedding models); for a SPLADE model their dot
        product (SparseEncoder's similarity, an inference-free model's first text as a query); for a multi-vector
        model their MaxSim, the first text as a query and the second as a document."""
        future, _ = self.submit_scores([p[0] for p in pairs], [p[1] for p in pairs])
        return future.result()

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """(document index, score) of the `top_n` best documents for `query`, best first, ties in input order;
        as CrossEncoder.rank. Scores are one per pair, so a cross-encoder with several labels is refused."""
        self.check_rankable()
        future, _ = self.submit_scores([query] * len(documents), list(documents))
        return ranked(future.result(), top_n)

    def check_rankable(self) -> None:
        """Ranking takes one score per document; a cross-encoder with several labels gives one per label."""
        if self.cross_encoder and self.dim != 1:
            raise InputError(f"{self.model_id} gives {self.dim} scores per pair (one per label); ranking needs a "
                             "model with one", "model")

    def submit_scores(self, firsts: Sequence[str], seconds: Sequence[str], raw: bool = False) -> tuple[Future, int]:
        """Queue text pairs for `score`; returns the future of their scores and the tokens they put through the
        model. `raw`: a cross-encoder's logits, before its activation (TEI's raw_scores). An embedding model embeds
        each distinct text once; its scores are cosines either way (a SPLADE model's, dot products)."""
        if len(firsts) != len(seconds):
            raise InputError(f"{len(firsts)} first texts for {len(seconds)} second texts; pair them one to one")
        if not firsts:
            return _resolved(np.zeros(0, np.float32)), 0
        model = self.model
        if self.multi_vector:
            return self._submit_maxsim(firsts, seconds)
        if self._static is not None:
            return self._submit_inference_free_scores(firsts, seconds)
        if not self.cross_encoder:
            texts, row = _distinct([*firsts, *seconds])
            left, right = [row[t] for t in firsts], [row[t] for t in seconds]
            ids = self._pair_texts(texts, None, seconds, firsts)

            def similarities(vectors: np.ndarray) -> np.ndarray:
                return np.einsum("ij,ij->i", vectors[left], vectors[right])

            return (self.submit(ids, normalize=not self.sparse, then=similarities),
                    sum(self.embedded_tokens(ids)))
        pairs = model.tokenizer.encode_pairs(firsts, seconds)
        labels, activation = model.spec.scores.labels, ACTIVATIONS[model.spec.scores.activation]

        def scores(logits: np.ndarray) -> np.ndarray:
            out = logits if raw else np.array(activation(mx.array(logits)), np.float32)
            return out[:, 0].copy() if labels == 1 else out

        return self._scheduler.submit(pairs.ids, pairs.splits, scores), sum(map(len, pairs.ids))

    # ---- classes ----------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        """A sequence classifier's label names, in the order of its scores (config.json's id2label); none for an
        embedding model."""
        scores = self.model.spec.scores
        return () if scores is None else scores.names

    def classify(self, inputs: Sequence[str | Sequence[str]], raw: bool = False) -> np.ndarray:
        """Each input's score per label (`labels`), as transformers' text-classification pipeline gives them:
        softmax over the labels, a sigmoid for one label or a multi-label model, the logits for a regression (or
        with `raw`). An input is a text or a (first, second) pair of texts."""
        future, _ = self.submit_classes(inputs, raw)
        return future.result()

    def check_classifies(self, name: str | None = None) -> None:
        """Refuse to classify with an embedding model, naming it `name` (a server's name for it) or its model id."""
        if not self.cross_encoder:
            raise InputError(f"{name or self.model_id} is an embedding model, with no labels to classify into; "
                             "classification needs a sequence classifier (a *ForSequenceClassification "
                             "checkpoint)", "model")

    def submit_classes(self, inputs: Sequence[str | Sequence[str]], raw: bool = False,
                       keep_last: int | None = None) -> tuple[Future, int]:
        """Queue inputs for `classify`; returns the future of their scores and the tokens they put through the
        model. Texts and pairs may be mixed; each is tokenized as transformers tokenizes it. `keep_last` keeps
        each text's last N tokens (vLLM's truncate_prompt_tokens); a pair is cut from its longer text."""
        if isinstance(inputs, str):
            raise TypeError("classify() takes a list of inputs, not one string")
        self.check_classifies()
        self.check_keep_last(keep_last)
        singles, pairs = split_pairs(inputs)
        for i in pairs:
            if not (isinstance(inputs[i], Sequence) and len(inputs[i]) == 2):
                raise InputError(f"input {i} is neither a text nor a pair of texts", index=i)
            if keep_last is not None:
                raise InputError(f"input {i} is a pair: keeping the last tokens applies to single texts; a long "
                                 "pair is cut from the end of its longer text", index=i)
        if not inputs:
            return _resolved(np.zeros((0, self.dim), np.float32)), 0
        rows: list[list[int]] = [[] for _ in inputs]
        splits = [0] * len(inputs)
        tokenizer = self.model.tokenizer
        try:  # errors name the n-th text (or pair) of their kind: retold about its input
            texts = tokenizer.encode([inputs[i] for i in singles], keep_last=keep_last)
        except InputError as e:
            raise renumbered(e, singles) from e
        try:
            encoded = tokenizer.encode_pairs([inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs])
        except InputError as e:
            raise renumbered(e, pairs) from e
        for i, row in zip(singles, texts):
            rows[i], splits[i] = row, len(row)
        for i, row, split in zip(pairs, encoded.ids, encoded.splits):
            rows[i], splits[i] = row, split
        return self._submit_classes(rows, splits, raw), sum(map(len, rows))

    def submit_class_rows(self, rows: Sequence[Sequence[int]], raw: bool = False) -> Future:
        """Queue texts already tokenized (`tokenize`, `input_rows`) for `classify`: a batch job's rows."""
        self.check_classifies()
        rows = self._validate(rows, None)
        if not rows:
            return _resolved(np.zeros((0, self.dim), np.float32))
        return self._submit_classes(rows, [len(row) for row in rows], raw)

    def _submit_classes(self, rows: list[list[int]], splits: list[int], raw: bool) -> Future:
        """Queue classifier rows (`splits`: where each pair's second text starts); logits, or `class_scores`."""
        problem_type = self.model.spec.scores.problem_type
        finish = (lambda logits: logits) if raw else (lambda logits: class_scores(logits, problem_type))
        return self._scheduler.submit(rows, splits, finish)

    def input_length(self, query: bool = False) -> int:
        """The most tokens an input keeps: the model's maximum, or a multi-vector model's query or document
        length."""
        length = self.max_length  # which loads the model, and `_multi` with it
        return length if self._multi is None else self._multi.spec.task_length(query, length)

    def embedded_tokens(self, ids: Sequence[Sequence[int] | ImageRow], query: bool = False) -> list[int]:
        """Tokens each row puts through the model: its length, or its windows' when long inputs are chunked; an
        image's patches; a multi-vector model's text, cut at its query's or document's length."""
        self.load()  # the windows are known once the model is
        if self._multi is not None:
            length = self.input_length(query)
            return [min(len(row), length) for row in ids]
        if self._windows is None:
            return [len(row) for row in ids]
        return [len(row) if isinstance(row, ImageRow) else sum(map(len, self._windows.split(row))) for row in ids]

    def check_embeds(self, name: str | None = None) -> None:
        """Refuse to embed with a cross-encoder, naming it `name` (a server's name for it) or its model id."""
        if self.cross_encoder:
            raise InputError(f"{name or self.model.model_id} is a cross-encoder (a sequence classifier): it scores "
                             "texts and (query, document) pairs with classify and rerank, and embeds nothing",
                             "model")

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """The one check of `dimensions` (leading components kept, then re-normalized), wherever it comes from:
        the API, `--dimensions`, Ray."""
        if dimensions is not None and self.cross_encoder:
            raise InputError(f"{self.model_id} is a sequence classifier: it scores each of its {self.dim} labels, so "
                             "dimensions does not apply", "dimensions")
        if dimensions is not None and self.sparse:
            raise InputError(f"{self.model_id} is a sparse (SPLADE) model: its vectors weigh every vocabulary entry, "
                             "so dimensions does not apply", "dimensions")
        if dimensions is not None and not 1 <= dimensions <= self.dim:
            raise InputError(f"dimensions must be between 1 and {self.dim} for this model, got {dimensions}",
                             "dimensions")
        return dimensions

    def _validate(self, ids: Sequence[Sequence[int] | ImageRow], dimensions: int | None) -> list[list[int] | ImageRow]:
        model = self.model
        self.check_dimensions(dimensions)
        rows = [r if isinstance(r, ImageRow) else list(r) for r in ids]
        vocab = model.tokenizer.vocab_size
        for i, row in enumerate(rows):
            if isinstance(row, ImageRow):
                continue
            if not row:
                raise InputError(f"input {i} has no tokens")
            if len(row) > model.max_length and self._windows is None:
                raise InputError(f"input {i} has {len(row)} tokens, more than the model's maximum of "
                                 f"{model.max_length}")
            if min(row) < 0 or max(row) >= vocab:
                raise InputError(f"input {i} has a token id outside the vocabulary [0, {vocab})")
        return rows
