"""The models a server serves: names and aliases mapped to engines that load on first use or at start."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .engine import DEFAULT_MODEL, EmbeddingEngine
from .errors import EmbedError, InputError, ModelNotFound, NotReady
from .hub import canonical_id, resolve_model_path

log = logging.getLogger("embed.server")


class ModelPinned(ModelNotFound):
    """The server pins one model (`--embedding-model`) and the request named another."""


@dataclass
class ServedModel:
    """One model named at start; its engine is built then, but loads only on first use unless preloaded."""

    name: str
    engine: EmbeddingEngine

    @property
    def aliases(self) -> tuple[str, ...]:
        """The name as given, the Hub repo id it stands for, and the repo's (or folder's) short name."""
        repo_id = canonical_id(self.name)
        return tuple(dict.fromkeys([self.name, repo_id, repo_id.rstrip("/").rsplit("/", 1)[-1]]))


@dataclass
class ModelRegistry:
    """Requests pick a model by name; only models named at start are ever loaded."""

    models: list[ServedModel]
    pinned: bool = False  # `--embedding-model`: another model is a 400, not a 404
    preload: bool = False
    truncate: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    failure: Exception | None = None

    def __post_init__(self) -> None:
        self._by_alias: dict[str, ServedModel] = {}
        for served in self.models:  # exact names first, so a short alias never shadows a full name
            self._by_alias.setdefault(served.name, served)
        for served in self.models:
            for alias in served.aliases:
                self._by_alias.setdefault(alias, served)

    def resolve(self, name: str | None) -> ServedModel:
        """The served model a request names; no name means the first (or pinned) one, as vllm-mlx does."""
        if name is None:
            return self.models[0]
        served = self._by_alias.get(name)
        if served is not None:
            return served
        names = ", ".join(m.name for m in self.models)
        if self.pinned:
            raise ModelPinned(f"this server serves only {names} (--embedding-model); it does not serve {name!r}")
        raise ModelNotFound(f"model {name!r} is not served here; served: {names}")

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
    preload: bool = False,
    truncate: bool = True,
    batch_tokens: int | None = None,
    lanes: int | None = None,
) -> ModelRegistry:
    """`--embedding-model M` serves M alone and loads it at start, as vllm-mlx does; the default model otherwise."""
    if embedding_model is not None and any(m != embedding_model for m in models):
        raise InputError(f"--embedding-model serves {embedding_model} alone; drop the other MODEL arguments")
    names = [embedding_model] if embedding_model is not None else list(dict.fromkeys(models)) or [DEFAULT_MODEL]
    for name in names:  # a typo fails now, not as a 404 on the first request; loading still waits
        resolve_model_path(name)
    options = {k: v for k, v in {"batch_tokens": batch_tokens, "lanes": lanes}.items() if v is not None}
    served = [ServedModel(name, EmbeddingEngine(name, truncate=truncate, **options)) for name in names]
    pinned = embedding_model is not None
    return ModelRegistry(served, pinned=pinned, preload=preload or pinned, truncate=truncate)
