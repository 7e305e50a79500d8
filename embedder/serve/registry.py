"""The models a server serves: names and aliases mapped to engines that load on first use or at start."""

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import DEFAULT_MODEL, EmbeddingEngine
from ..errors import EmbedError, InputError, ModelNotFound, NotReady
from ..hub import canonical_id, resolve_model_path
from ..models.st_config import is_cross_encoder
from ..options import EngineOptions

log = logging.getLogger("embed.server")


class ModelPinned(ModelNotFound):
    """The server pins one model (`--embedding-model`) and the request named another."""


# Name the first served model: candle-vllm's documented example's, and what infinity's generated client sends
DEFAULT_NAMES = ("default", "default/not-specified")


@dataclass
class ServedModel:
    """One model named at start; its engine is built then, but loads only on first use unless preloaded."""

    name: str  # the model as given: a Hub id or a folder
    engine: EmbeddingEngine
    served_names: tuple[str, ...] = ()  # `--served-model-name` / NAME=MODEL: what clients call it
    cross_encoder: bool = False  # a reranker, known from its config before it loads

    @property
    def public_name(self) -> str:
        """The name /v1/models lists first and a request without a model is answered with."""
        return (self.served_names or (self.name,))[0]

    @property
    def aliases(self) -> tuple[str, ...]:
        """Its served names, the name as given, the Hub repo id it stands for and the repo's (or folder's) short
        name."""
        repo_id = canonical_id(self.name)
        return tuple(dict.fromkeys([*self.served_names, self.name, repo_id, repo_id.rstrip("/").rsplit("/", 1)[-1]]))


@dataclass
class ModelRegistry:
    """Requests pick a model by name; only models named at start are ever loaded."""

    models: list[ServedModel]
    pinned: bool = False  # `--embedding-model`: another model is a 400, not a 404
    preload: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    failure: Exception | None = None

    def __post_init__(self) -> None:
        self._by_alias: dict[str, ServedModel] = {}
        for served in self.models:  # exact names first, so a short alias never shadows a full name
            for name in (*served.served_names, served.name):
                self._by_alias.setdefault(name, served)
        for served in self.models:
            for alias in served.aliases:
                self._by_alias.setdefault(alias, served)

    def resolve(self, name: str | None, rerank: bool = False) -> ServedModel:
        """The served model a request names. No name, or "default" or infinity's "default/not-specified" (unless a
        model is served by that name), means the first (or pinned) one, as vllm-mlx and candle-vllm do; but the first
        reranker for a rerank, and the first embedding model otherwise, where both kinds are served (TEI's and
        infinity's requests name none)."""
        served = self._by_alias.get(name) if name is not None else None
        if served is not None:
            return served
        if name is None or name in DEFAULT_NAMES:
            return next((m for m in self.models if m.cross_encoder == rerank), self.models[0])
        names = ", ".join(m.public_name for m in self.models)
        if self.pinned:
            raise ModelPinned(f"this server serves only {names} (--embedding-model); it does not serve {name!r}")
        raise ModelNotFound(f"model {name!r} is not served here; served: {names}")

    def names(self) -> set[str]:
        """Every name a request may give a served model."""
        return set(self._by_alias)

    def loaded_engine(self, served: ServedModel) -> EmbeddingEngine:
        """The model's engine, loaded; blocks while it loads, so call it off the event loop."""
        served.engine.load()
        return served.engine

    def loaded(self) -> list[ServedModel]:
        return [served for served in self.models if served.engine.loaded]

    def warm_up(self) -> None:
        """Load the preloaded models; a failure is kept for /health rather than raised into nowhere."""
        try:
            for served in self.models if self.preload else []:
                log.info("loading %s", served.name)
                served.engine.load()
        except Exception as exc:  # kept for /health: the server stays up to say why it is not ready
            log.error("cannot load a served model: %s", exc, exc_info=not isinstance(exc, EmbedError))
            self.failure = exc
            return
        self.ready = True

    def check_ready(self) -> None:
        """Raise NotReady until warm_up has loaded every preloaded model."""
        if self.failure is not None:
            raise NotReady(f"a served model failed to load: {self.failure}")
        if not self.ready:
            raise NotReady("the server is still loading its models")

    def close(self) -> None:
        for served in self.models:
            served.engine.unload()


def build_registry(
    models: Sequence[str],
    *,
    embedding_model: str | None = None,
    served_model_names: Sequence[str] = (),
    preload: bool = False,
    options: EngineOptions = EngineOptions(),
) -> ModelRegistry:
    """`--embedding-model M` serves M alone and loads it at start, as vllm-mlx does; the default model otherwise.
    A model may be given as NAME=MODEL, or with `served_model_names` (one model only), to answer to those names."""
    pinned = None if embedding_model is None else _named(embedding_model)[1]
    if pinned is not None and any(_named(m)[1] != pinned for m in models):
        raise InputError(f"--embedding-model serves {pinned} alone; drop the other MODEL arguments")
    names: dict[str, list[str]] = {}  # model -> the names it is served under, in order
    for entry in [embedding_model, *models] if embedding_model is not None else list(models) or [DEFAULT_MODEL]:
        name, model = _named(entry)
        names.setdefault(model, []).extend([name] if name else [])
    if served_model_names:
        if len(names) != 1:
            raise InputError("--served-model-name names one model; to name several, give each as NAME=MODEL")
        names[next(iter(names))].extend(served_model_names)
    seen: dict[str, str] = {}
    for model, served_as in names.items():
        for name in served_as:
            if seen.setdefault(name, model) != model:
                raise InputError(f"the served name {name!r} is given to both {seen[name]} and {model}")
    # A typo fails now, not as a 404 on the first request; loading still waits.
    rerankers = {model: _scores_pairs(resolve_model_path(model)) for model in names}
    served = [ServedModel(model, EmbeddingEngine(options=dataclasses.replace(options, model=model)),
                          tuple(dict.fromkeys(served_as)), rerankers[model]) for model, served_as in names.items()]
    return ModelRegistry(served, pinned=pinned is not None, preload=preload or pinned is not None)


def _scores_pairs(path: Path) -> bool:
    """Whether the model at `path` is a cross-encoder, from its config.json alone; one whose config cannot be read
    here counts as an embedding model, and its load says what is wrong."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_cross_encoder(config)


def _named(entry: str) -> tuple[str | None, str]:
    """NAME=MODEL as (NAME, MODEL); a plain model (or an existing path holding '=') as (None, MODEL)."""
    name, sep, model = entry.partition("=")
    if not sep or not name or not model or os.path.exists(entry):
        return None, entry
    return name, model
