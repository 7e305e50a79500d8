"""Read a model's sentence-transformers files into the post-processing it asks for (pure, no MLX)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from .multi_vector_config import MultiVectorSpec

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# sentence-transformers < 5 wrote booleans; 5+ writes `pooling_mode` (a string or a list).
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "GELU": "gelu", "Sigmoid": "sigmoid"}


@dataclass(frozen=True)
class DenseSpec:
    """One sentence-transformers Dense module: y = activation(x W^T + b)."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass(frozen=True)
class ScoreSpec:
    """A sequence classifier's output: `labels` logits per input (a text, or a query and document pair), then
    `activation` as sentence-transformers' CrossEncoder.predict applies it; `names` are the labels in logit order
    (config.json's id2label), `problem_type` what transformers trained them for."""

    labels: int
    activation: str
    names: tuple[str, ...] = ()
    problem_type: str | None = None


@dataclass(frozen=True)
class SpladeSpec:
    """sentence-transformers' SpladePooling: log(1 + relu(MLM logits)) (`log1p_relu`: a second log1p, as
    OpenSearch's models), then the max (SPLADE v2 on) or the sum over the tokens; one weight per vocabulary entry."""

    strategy: str = "max"
    activation: str = "relu"
    max_active_dims: int | None = None  # SparseEncoder's: only each vector's largest weights kept, the rest zeroed
    # An inference-free model's query side (SparseStaticEmbedding): the folder of the weight each query token takes
    query_weights: Path | None = None


SPLADE_STRATEGIES, SPLADE_ACTIVATIONS = ("max", "sum"), ("relu", "log1p_relu")


@dataclass(frozen=True)
class PipelineSpec:
    """What happens after the encoder: pooling modes, Dense layers, normalization, limits, prompts."""

    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    has_st_files: bool = False
    scores: ScoreSpec | None = None  # a cross-encoder: the model scores text pairs instead of embedding texts
    splade: SpladeSpec | None = None  # a sparse encoder: vocabulary weights from its masked-LM head, pooled
    multi_vector: MultiVectorSpec | None = None  # a late-interaction (ColBERT) model: `dense` runs on every token


def read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e


def module_kind(type_name: str) -> str:
    """`sentence_transformers.models.Pooling` and the 5.x module paths both end in the class name."""
    return type_name.rsplit(".", 1)[-1]


def pooling_modes(config: dict) -> tuple[str, ...]:
    """Both the legacy boolean keys and the newer `pooling_mode` string or list."""
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
    if not modes:
        raise ModelError("pooling config names no pooling mode")
    for m in modes:
        if m not in POOLING_MODES:
            raise ModelError(f"unsupported pooling mode {m!r}; supported: {', '.join(POOLING_MODES)}")
    # sentence-transformers concatenates in its own fixed order.
    return tuple(m for m in POOLING_MODES if m in modes)


def whole_number(value, what: str) -> int | None:
    """A count a model's files set, checked: None (not set), or a whole number of at least 1; `what` names it."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ModelError(f"{what} must be a whole number of at least 1, got {value!r}")
    return value


def _max_active_dims(st_config: dict) -> int | None:
    """SparseEncoder's `max_active_dims`, as config_sentence_transformers.json saves it."""
    return whole_number(st_config.get("max_active_dims"), "config_sentence_transformers.json: max_active_dims")


def splade_spec(config: dict) -> SpladeSpec:
    """A SpladePooling module's config.json, checked."""
    spec = SpladeSpec(config.get("pooling_strategy", "max"), config.get("activation_function", "relu"))
    if spec.strategy not in SPLADE_STRATEGIES or spec.activation not in SPLADE_ACTIVATIONS:
        raise ModelError(f"unsupported SpladePooling {spec.strategy!r} with {spec.activation!r}; supported: "
                         f"{' or '.join(SPLADE_STRATEGIES)} with {' or '.join(SPLADE_ACTIVATIONS)}")
    return spec


def _dense(path: Path) -> DenseSpec:
    config = read_json(path / "config.json")
    activation = module_kind(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    if activation not in _ACTIVATIONS:
        raise ModelError(f"unsupported Dense activation {activation} in {path}")
    if not (path / "model.safetensors").exists():
        raise ModelError(f"Dense layer {path} has no model.safetensors (PyTorch .bin weights are not supported)")
    return DenseSpec(
        path=path,
        in_features=config["in_features"],
        out_features=config["out_features"],
        bias=config.get("bias", True),
        activation=_ACTIVATIONS[activation],
    )


def tokenizer_max_length(model_dir: Path) -> int | None:
    """sentence-transformers 6 saves max_seq_length as the tokenizer's model_max_length."""
    path = model_dir / "tokenizer_config.json"
    value = read_json(path).get("model_max_length") if path.exists() else None
    return value if isinstance(value, int) and value < 1_000_000 else None  # transformers' "no limit" is 1e30


def is_cross_encoder(config: dict) -> bool:
    """A `*ForSequenceClassification` checkpoint: BERT's, XLM-RoBERTa's, ModernBERT's... (rerankers)."""
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ())


def label_count(config: dict) -> int:
    """transformers saves id2label, from which it derives num_labels (2 when neither is saved)."""
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else int(config.get("num_labels", 2))


def read_score_spec(model_dir: Path, config: dict) -> ScoreSpec:
    """The activation CrossEncoder applies: from config_sentence_transformers.json (sentence-transformers 6),
    config.json's `sentence_transformers` (5) or `sbert_ce_default_activation_function` (< 4); else Sigmoid for
    one label and Identity for several. Like CrossEncoder without trust_remote_code, only torch's own classes."""
    st_file = model_dir / "config_sentence_transformers.json"
    candidates = (
        (read_json(st_file) if st_file.exists() else {}).get("activation_fn"),
        (config.get("sentence_transformers") or {}).get("activation_fn"),
        config.get("sbert_ce_default_activation_function"),
    )
    path = next((c for c in candidates if isinstance(c, str) and c.startswith("torch.")), None)
    labels = label_count(config)
    if path is not None and module_kind(path) not in _ACTIVATIONS:
        raise ModelError(f"unsupported cross-encoder activation {path}; supported: {', '.join(_ACTIVATIONS)}")
    activation = ("sigmoid" if labels == 1 else "identity") if path is None else _ACTIVATIONS[module_kind(path)]
    problem_type = config.get("problem_type")
    return ScoreSpec(labels, activation, label_names(config, labels),
                     problem_type if isinstance(problem_type, str) else None)


def label_names(config: dict, labels: int) -> tuple[str, ...]:
    """Each label's name in logit order, from id2label (JSON keys "0", "1"...); LABEL_i where it names none, as
    transformers does."""
    id2label = config.get("id2label")
    id2label = id2label if isinstance(id2label, dict) else {}
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(labels))


def read_pipeline_spec(model_dir: Path, default_pooling: str = "mean", config: dict | None = None) -> PipelineSpec:
    """Follow modules.json when present; a bare transformers checkpoint gets `default_pooling`; a cross-encoder
    (`config` says so) gets its scores instead of pooling."""
    modules_file = model_dir / "modules.json"
    st_config = model_dir / "config_sentence_transformers.json"
    prompts = read_json(st_config) if st_config.exists() else {}
    bert_config_file = model_dir / "sentence_bert_config.json"
    bert_config = read_json(bert_config_file) if bert_config_file.exists() else {}
    common = dict(
        max_seq_length=bert_config.get("max_seq_length") or tokenizer_max_length(model_dir),
        do_lower_case=bool(bert_config.get("do_lower_case", False)),
        prompts=dict(prompts.get("prompts") or {}),
        default_prompt_name=prompts.get("default_prompt_name"),
    )
    if config is not None and is_cross_encoder(config):
        return PipelineSpec(pooling=(), scores=read_score_spec(model_dir, config), **common)
    modules = [(module_kind(m["type"]), model_dir / m.get("path", ""), m["type"])
               for m in sorted(read_json(modules_file) if modules_file.exists() else [], key=lambda m: m.get("idx", 0))]
    if [kind for kind, _, _ in modules] == ["Router"]:
        return _inference_free_pipeline(model_dir, prompts, common)
    from .multi_vector_config import is_multi_vector

    if is_multi_vector(prompts, config, [kind for kind, _, _ in modules]):
        return _multi_vector_pipeline(model_dir, prompts, config, modules, common)
    if not modules_file.exists():
        return PipelineSpec(pooling=(default_pooling,), **common)

    pooling, include_prompt, dense, normalize, splade = None, True, [], False, None
    for kind, path, type_name in modules:
        if kind in ("Transformer", "MLMTransformer"):
            if path != model_dir and (path / "sentence_bert_config.json").exists():
                common["max_seq_length"] = read_json(path / "sentence_bert_config.json").get("max_seq_length")
        elif kind == "Pooling":
            config = read_json(path / "config.json")
            pooling = pooling_modes(config)
            include_prompt = bool(config.get("include_prompt", True))
        elif kind == "Dense":
            dense.append(_dense(path))
        elif kind == "Normalize":
            normalize = True
        elif kind == "SpladePooling":
            pooling, splade = ("splade",), splade_spec(read_json(path / "config.json"))
        else:
            raise ModelError(f"unsupported sentence-transformers module {type_name} ({path})")
    if pooling is None:
        raise ModelError(f"{modules_file} has no Pooling module")
    if splade is not None:
        splade = dataclasses.replace(splade, max_active_dims=_max_active_dims(prompts))
    return PipelineSpec(
        pooling=pooling,
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=normalize,
        splade=splade,
        has_st_files=True,
        **common,
    )


def _multi_vector_pipeline(model_dir: Path, st_config: dict, config: dict | None, modules: list[tuple[str, Path, str]],
                           common: dict) -> PipelineSpec:
    """A late-interaction model's pipeline: its token-level Dense layers (Stanford-NLP's one `linear.weight`), and
    a tokenizer cut long enough for the longer of its query and document lengths."""
    from .multi_vector_config import read_multi_vector_spec, stanford_projection_shape

    spec, prompts = read_multi_vector_spec(model_dir, st_config, config,
                                           [(kind, path) for kind, path, _ in modules])
    dense = []
    for kind, path, type_name in modules:
        if kind == "Dense":
            dense.append(_dense(path))
        elif kind == "Transformer" and (path / "sentence_bert_config.json").exists():
            common["max_seq_length"] = read_json(path / "sentence_bert_config.json").get("max_seq_length")
        elif kind not in ("Transformer", "MultiVectorMask", "Normalize"):
            raise ModelError(f"unsupported module {type_name} ({path}) in a multi-vector model")
    if not modules:
        out_features, in_features = stanford_projection_shape(model_dir)
        dense.append(DenseSpec(model_dir, in_features, out_features, False, "identity"))
    if common["max_seq_length"]:
        common["max_seq_length"] = spec.longest(common["max_seq_length"])
    return PipelineSpec(pooling=(), dense=tuple(dense), multi_vector=spec, has_st_files=bool(modules),
                        **{**common, "prompts": prompts})


def router_routes(model_dir: Path) -> dict[str, list[tuple[str, Path]]] | None:
    """A Router model's routes, from router_config.json: task -> its modules (class name, folder) in order; None
    where the model has none."""
    path = model_dir / "router_config.json"
    if not (model_dir / "modules.json").exists() or not path.exists():
        return None
    config = read_json(path)
    types = config.get("types") or {}
    return {task: [(module_kind(types.get(name, "")), model_dir / name) for name in names]
            for task, names in (config.get("structure") or {}).items()}


def encoder_folder(model_dir: Path) -> Path:
    """Where the model's encoder keeps its config, weights and tokenizer: its own folder, or a Router's document
    transformer's."""
    routes = router_routes(model_dir)
    for kind, path in (routes or {}).get("document", []):
        if kind in ("Transformer", "MLMTransformer") and (path / "config.json").exists():
            return path
    return model_dir


def _inference_free_pipeline(model_dir: Path, st_config: dict, common: dict) -> PipelineSpec:
    """SparseEncoder's Router of an inference-free SPLADE model (OpenSearch's doc-only encoders): documents through
    a masked-LM encoder and SpladePooling, queries weighed token by token (SparseStaticEmbedding), no encoder."""
    routes = router_routes(model_dir) or {}
    query = [kind for kind, _ in routes.get("query", [])]
    document = [kind for kind, _ in routes.get("document", [])]
    supported = (query == ["SparseStaticEmbedding"] and len(document) == 2
                 and document[0] in ("Transformer", "MLMTransformer") and document[1] == "SpladePooling")
    if not supported:
        raise ModelError(f"{model_dir}: unsupported Router (query: {query}, document: {document}); supported: "
                         "queries through SparseStaticEmbedding, documents through a masked-LM and SpladePooling")
    (_, encoder), (_, pooling) = routes["document"]
    splade = splade_spec(read_json(pooling / "config.json"))
    splade = dataclasses.replace(splade, query_weights=routes["query"][0][1],
                                 max_active_dims=_max_active_dims(st_config))
    if (encoder / "sentence_bert_config.json").exists():
        common["max_seq_length"] = read_json(encoder / "sentence_bert_config.json").get("max_seq_length")
    common["max_seq_length"] = common["max_seq_length"] or tokenizer_max_length(encoder)
    return PipelineSpec(pooling=("splade",), splade=splade, has_st_files=True, **common)
