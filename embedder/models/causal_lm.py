"""Any causal LM that mlx-lm implements, as an encoder: its hidden states before the LM head."""

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError

# model_type values that mlx-lm serves with another type's module (as mlx_lm.utils.MODEL_REMAPPING).
ALIASES = {"mistral": "llama", "iquestcoder": "llama", "xverse": "llama"}


def lm_module_name(model_type: str) -> str | None:
    """mlx-lm's module for `model_type`, found on disk: importing mlx-lm takes seconds, so only a load does."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or spec.origin is None:
        return None
    name = ALIASES.get(model_type, model_type).replace("-", "_")
    return name if (Path(spec.origin).parent / "models" / f"{name}.py").exists() else None


@dataclass
class ModelArgs:
    """mlx-lm's own ModelArgs reads the config; this one only carries it there."""

    model_type: str
    config: dict

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        return cls(params["model_type"], classic_config(params))


def classic_config(config: dict) -> dict:
    """transformers 5 saves `rope_parameters` and `num_local_experts`; mlx-lm reads the older names, and
    would otherwise fall back to its default theta without a word."""
    out = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # one set for all layers, not per layer type
        out.setdefault("rope_theta", rope["rope_theta"])
        if "partial_rotary_factor" in rope:
            out.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
        if rope.get("rope_type", "default") != "default":
            out.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    if "num_local_experts" in config:
        out.setdefault("num_experts", config["num_local_experts"])
    return out


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        name = lm_module_name(args.model_type)
        if name is None:
            raise ModelError(f"{args.model_type!r} needs mlx-lm: pip install 'embed[llm]'")
        arch = importlib.import_module(f"mlx_lm.models.{name}")
        lm = arch.Model(arch.ModelArgs.from_dict(args.config))
        if not isinstance(getattr(lm, "model", None), nn.Module):
            raise ModelError(f"mlx-lm's {name} model has no inner `model` to take hidden states from")
        self.model = lm.model  # the only registered child: the LM head is never loaded or run
        self._lm_sanitize = getattr(lm, "sanitize", lambda w: w)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """The last hidden state (B, L, H), after the final norm.

        The engine pads on the right, and causal attention only looks left, so a real token never sees
        a pad and its state equals its unpadded run; pooling reads the mask and never a pad position.
        """
        return self.model(input_ids)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """mlx-lm's sanitize, after giving a bare base model (sentence-transformers' save) its `model.` prefix."""
        if not any(k.startswith("model.") for k in weights):
            weights = {f"model.{k}": v for k, v in weights.items()}
        weights = self._lm_sanitize(dict(weights))
        return {k: v for k, v in weights.items() if k.startswith("model.") and not k.endswith("rotary_emb.inv_freq")}


class Classifier(Model):
    """*ForSequenceClassification of a causal LM (Qwen2's, Llama's...: reward models, classifiers): the `score`
    projection of each row's last real token, as transformers reads it."""

    def __init__(self, args: ModelArgs, labels: int):
        super().__init__(args)
        self.score = nn.Linear(args.config["hidden_size"], labels, bias=False)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """Logits (B, labels) at each row's last real token: transformers' last non-pad token, the padding being on
        the right and a row's own tokens never counted as padding (a pad id equal to its eos would be, there)."""
        hidden = self.model(input_ids)
        last = attention_mask.astype(mx.int32).sum(axis=1) - 1
        return self.score(mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        score = {k: v for k, v in weights.items() if k.startswith("score.")}
        return {**super().sanitize({k: v for k, v in weights.items() if k not in score}), **score}
