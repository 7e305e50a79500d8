"""Read a late-interaction (ColBERT) model's files into what its token vectors need, as sentence-transformers 6's
MultiVectorEncoder reads them (pure, no MLX): its own saves, PyLate's (model_type "ColBERT") and Stanford-NLP
ColBERT's (`HF_ColBERT`, with `artifact.metadata`)."""

import json
import string
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .st_config import read_json, whole_number

PUNCTUATION = tuple(string.punctuation)  # PyLate's and Stanford-NLP's default skiplist


@dataclass(frozen=True)
class QueryExpansion:
    """ColBERT's query augmentation: a query shorter than `length` tokens is padded to it with `token` (None: the
    tokenizer's mask token), whose vectors are scored too; `fixed` also cuts longer queries to `length`. With
    `attend` false the encoder's other tokens do not attend to them (they only look)."""

    length: int
    fixed: bool = True
    attend: bool = False
    token: str | None = None


@dataclass(frozen=True)
class MultiVectorSpec:
    """A late-interaction model: one vector per token through token-level Dense layers (the pipeline's `dense`),
    L2-normalized; queries and documents cut to their own lengths, queries expanded, documents' skiplisted tokens
    (punctuation, for ColBERT) dropped; scored by MaxSim."""

    query_length: int | None = None  # tokens a query keeps at most (None: the model's maximum)
    document_length: int | None = None
    expansion: QueryExpansion | None = None
    skiplist: tuple[str, ...] = ()
    skiplist_tasks: tuple[str, ...] = ("document",)
    normalize: bool = True
    prefix_tokens: tuple[str, ...] = ()  # older saves' markers ([unused0]): made special tokens, so they stay whole
    truncate_dim: int | None = None
    mean_maxsim: bool = False  # "meanmaxsim": MaxSim divided by the query's vectors

    def task_length(self, query: bool, model_length: int) -> int:
        """How many tokens a query or a document keeps at most, as sentence-transformers cuts them."""
        cap = (self.query_length if query else self.document_length) or model_length
        if query and self.expansion is not None:
            return self.expansion.length if self.expansion.fixed else max(cap, self.expansion.length)
        return cap

    def longest(self, model_length: int) -> int:
        """The most tokens any input keeps: the tokenizer's own cut."""
        return max(self.task_length(True, model_length), self.task_length(False, model_length))


def is_multi_vector(st_config: dict, config: dict | None, module_kinds: list[str]) -> bool:
    return (st_config.get("model_type") in ("MultiVectorEncoder", "ColBERT") or "MultiVectorMask" in module_kinds
            or "HF_ColBERT" in ((config or {}).get("architectures") or ()))


def read_multi_vector_spec(model_dir: Path, st_config: dict, config: dict | None,
                           modules: list[tuple[str, Path]]) -> tuple[MultiVectorSpec, dict[str, str]]:
    """The spec, and the prompts (query/document prefixes included) the model's tokens need."""
    prompts = dict(st_config.get("prompts") or {})
    # "meanmaxsim" divides by the query's vectors; any other saved name (PyLate's "MaxSim", a cosine) is MaxSim
    common = dict(truncate_dim=_positive(st_config.get("truncate_dim"), "truncate_dim"),
                  mean_maxsim=st_config.get("similarity_fn_name") == "meanmaxsim")
    if "HF_ColBERT" in ((config or {}).get("architectures") or ()):
        return _stanford(model_dir, prompts, common)
    if st_config.get("model_type") == "ColBERT":
        return _pylate(st_config, prompts, common)
    transformer: dict = {}
    skiplist, tasks, normalize = (), ("document",), False
    for kind, path in modules:
        if kind == "Transformer" and (path / "sentence_bert_config.json").exists():
            transformer = read_json(path / "sentence_bert_config.json")
        elif kind == "MultiVectorMask":
            mask = read_json(path / "config.json")
            if mask.get("keep_only_token_ids"):
                raise ModelError(f"{path}: keep_only_token_ids (image-patch documents) is not supported")
            skiplist = tuple(mask.get("skiplist_words") or ())
            tasks = mask.get("skiplist_tasks") or ["document"]
            tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        elif kind == "Normalize":
            normalize = True
    spec = MultiVectorSpec(query_length=_positive(transformer.get("query_length"), "query_length"),
                           document_length=_positive(transformer.get("document_length"), "document_length"),
                           expansion=_expansion(transformer.get("query_expansion")), skiplist=skiplist,
                           skiplist_tasks=tasks, normalize=normalize, **common)
    return spec, prompts


def _pylate(st_config: dict, prompts: dict[str, str], common: dict) -> tuple[MultiVectorSpec, dict[str, str]]:
    """PyLate 3's save: its markers and lengths at the top of config_sentence_transformers.json, queries expanded
    unless it says not, a punctuation skiplist unless it names one; its Dense modules are in modules.json."""
    prefixes = []
    for key, task in (("query_prefix", "query"), ("document_prefix", "document")):
        if key in st_config:
            prefix = st_config[key] or ""
            prefixes.append(prefix)
            prompts[task] = prefix + (prompts.get(task) or "").removeprefix(prefix)
    if "query_expansion" in st_config:
        expansion = _expansion(st_config["query_expansion"])
        query_length = _positive(st_config.get("query_length"), "query_length")
    else:
        expansion = None if st_config.get("do_query_expansion") is False else QueryExpansion(
            length=_positive(st_config.get("query_length"), "query_length") or 32,
            attend=bool(st_config.get("attend_to_expansion_tokens", st_config.get("attend_to_mask_tokens"))))
        query_length = None  # PyLate's query_length is the expansion's length
    skiplist = st_config.get("skiplist_words")
    spec = MultiVectorSpec(query_length=query_length,
                           document_length=_positive(st_config.get("document_length"), "document_length"),
                           expansion=expansion, skiplist=PUNCTUATION if skiplist is None else tuple(skiplist),
                           prefix_tokens=tuple(p for p in prefixes if p.strip()), **common)
    return spec, prompts


def _stanford(model_dir: Path, prompts: dict[str, str], common: dict) -> tuple[MultiVectorSpec, dict[str, str]]:
    """Stanford-NLP ColBERT (colbert-ir/colbertv2.0): [unused0]/[unused1] markers, queries always expanded with
    [MASK], punctuation skipped unless `mask_punctuation` is false; the projection is `linear.weight` beside the
    encoder's weights."""
    path = model_dir / "artifact.metadata"
    metadata = read_json(path) if path.exists() else {}
    markers = {"query": (metadata.get("query_token_id") or "[unused0]") + " ",
               "document": (metadata.get("doc_token_id") or "[unused1]") + " "}
    for task, marker in markers.items():
        prompts.setdefault(task, marker)
    expansion = QueryExpansion(length=_positive(metadata.get("query_maxlen"), "query_maxlen") or 32,
                               attend=bool(metadata.get("attend_to_mask_tokens")))
    spec = MultiVectorSpec(document_length=_positive(metadata.get("doc_maxlen"), "doc_maxlen"), expansion=expansion,
                           skiplist=PUNCTUATION if metadata.get("mask_punctuation", True) else (),
                           prefix_tokens=tuple(m.strip() for m in markers.values()), **common)
    return spec, prompts


def stanford_projection_shape(model_dir: Path) -> tuple[int, int]:
    """(out, in) of a Stanford-NLP checkpoint's `linear.weight`, from its safetensors header."""
    path = model_dir / "model.safetensors"
    try:
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        out_features, in_features = header["linear.weight"]["shape"]
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise ModelError(f"{path}: no ColBERT projection (linear.weight) to read: {e}") from e
    return out_features, in_features


def _expansion(config: dict | None) -> QueryExpansion | None:
    if config is None:
        return None
    if not isinstance(config, dict) or config.get("strategy") not in ("fixed", "min"):
        raise ModelError(f"unsupported query_expansion {config!r}; strategy fixed or min")
    length = _positive(config.get("length"), "query_expansion length")
    if length is None:
        raise ModelError("query_expansion needs a length")
    return QueryExpansion(length, config["strategy"] == "fixed", bool(config.get("attend", False)), config.get("token"))


def _positive(value, name: str) -> int | None:
    return whole_number(value, f"multi-vector {name}")
